"""The node-side policy the tool prints, enforced by the library a node's runtime uses: skopeo
1.18 (containers/image 5.34, as CRI-O) in a Debian 13 root, with `invoke trust-policy`'s own
policy.json and registries.d. The library's signed image is admitted; an unsigned image, an
image signed by another key and a tag moved onto another image are refused. The OpenShift and
Kyverno documents are valid against their projects' CRDs (tests/crds, vendored)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools import local_upstream, node_root
from habana_tasks.config import versions_file
from habana_tasks.config.targets import ImageSigning
from habana_tasks.core.errors import OK
from habana_tasks.core.process import ProcessRunner
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import cosign
from tests.conftest import ROOT, invoke_argv
from tests.crd_schema import cel_errors, crd_errors
from tests.integration.conftest import KERNELS, UpstreamFixture
from tests.keys import COSIGN_PASSWORD, build_signed, cosign_key_pair

pytestmark = [pytest.mark.integration]
CRDS = Path(__file__).resolve().parents[1] / "crds"
REFUSED = "A signature was required, but no signature exists"
FOREIGN = "Source image rejected: cryptographic signature verification failed"
POLICY = "/etc/containers/policy.json"
REGISTRIES_D = "/etc/containers/registries.d"


def trust_policy(versions: Path, form: str, *extra: str) -> str:
    done = subprocess.run(
        invoke_argv("trust-policy", "--versions", str(versions), "--format", form, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == OK, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def library(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A signed library of one image (built as a user builds it) and its versions file."""
    work = tmp_path_factory.mktemp("node-policy")
    key, public = cosign_key_pair(work / "keys")
    versions = test_upstream.versions(
        work / "versions.toml", KERNELS[:1], repository="library/node-policy"
    )
    versions.write_text(
        versions.read_text() + f'\n[cosign]\nkey = "{key}"\npublic_key = "{public}"\n'
    )
    code, out = build_signed(versions, work / "cache", "--no-load-test")
    assert code == OK, out
    return versions, work


@pytest.fixture(scope="module")
def node(library: tuple[Path, Path]) -> Path:
    """The Debian 13 root with the tool's own policy.json and registries.d installed."""
    versions, _ = library
    runner = ProcessRunner()
    root = node_root.ensure(ROOT / ".cache", runner)
    node_root.install(root, POLICY, trust_policy(versions, "policy-json"), runner)
    registries = trust_policy(versions, "registries-d")
    node_root.install(root, f"{REGISTRIES_D}/habana-ai-driver.yaml", registries, runner)
    return root


def pull(root: Path, image: str) -> subprocess.CompletedProcess[str]:
    """What the node's runtime library decides for image: skopeo copies it out, or refuses."""
    # The copy is removed inside the root (an ordinary user's root belongs to its namespace).
    script = (
        'out=$(mktemp -d) && skopeo --policy "$1" --registries.d "$2" copy'
        ' --src-tls-verify=false "docker://$3" "dir:$out"; code=$?; rm -rf "$out"; exit $code'
    )
    return subprocess.run(
        [*node_root.enter(root), "sh", "-c", script, "sh", POLICY, REGISTRIES_D, image],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def push_base_as(test_upstream: UpstreamFixture, image: str, label: str) -> None:
    """The upstream's minimal Debian pushed as `image` (a label of its own: its own digest)."""
    context = Path(os.environ.get("TMPDIR", "/tmp")) / f"ctx-{os.urandom(4).hex()}"
    context.mkdir()
    (context / "Containerfile").write_text(
        f"FROM {local_upstream.LOCAL_BASE}\nLABEL case={label}\n"
    )
    test_upstream.build_and_push(context, image)


def test_the_node_admits_the_signed_image_only(
    library: tuple[Path, Path], node: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    versions, _ = library
    target = versions_file.load(versions).targets[0]
    accepted = pull(node, target.image)
    assert accepted.returncode == 0, accepted.stderr

    # Another pair's tag made to name this signed image: the node's policy binds the repository
    # only, so it admits it (README: `invoke verify` and kmm-module's digest pins refuse it).
    swapped = f"{target.repository}:{target.driver}-6.1.0-99-amd64"
    test_upstream.runner.run(
        [
            "skopeo", "copy", "--quiet", "--preserve-digests",
            "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{target.image}", f"docker://{swapped}",
        ]
    )  # fmt: skip
    admitted = pull(node, swapped)
    assert admitted.returncode == 0, admitted.stderr

    unsigned = f"{target.repository}:unsigned"
    push_base_as(test_upstream, unsigned, "unsigned")
    refused = pull(node, unsigned)
    assert refused.returncode != 0 and REFUSED in refused.stderr, refused.stderr

    # Signed, by cosign, with a key that is not the library's.
    foreign = f"{target.repository}:foreign"
    push_base_as(test_upstream, foreign, "foreign")
    other_key, other_public = cosign_key_pair(tmp_path / "other")
    digest = RegistryClient([test_upstream.upstream.registry]).inspect(foreign).digest
    tool = cosign.find(ProcessRunner(), ROOT)
    cosign.sign(
        tool, ImageSigning(str(other_key), other_key, other_public), COSIGN_PASSWORD,
        f"{target.repository}@{digest}", frozenset({test_upstream.upstream.registry}),
    )  # fmt: skip
    refused = pull(node, foreign)
    assert refused.returncode != 0, refused.stderr
    # A signature is there and is checked: it fails the library's key.
    assert FOREIGN in refused.stderr and REFUSED not in refused.stderr, refused.stderr

    # The library's tag moved onto another image: its signature does not follow.
    push_base_as(test_upstream, target.image, "moved")
    refused = pull(node, target.image)
    assert refused.returncode != 0 and REFUSED in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("form", "extra", "crd", "version"),
    [
        ("clusterimagepolicy", (), "openshift/config.openshift.io_clusterimagepolicies.yaml", "v1"),
        (
            "clusterimagepolicy",
            ("--openshift", "4.18"),
            "openshift/release-4.19/config.openshift.io_clusterimagepolicies-TechPreviewNoUpgrade.yaml",
            "v1alpha1",
        ),
        (
            "clusterimagepolicy",
            ("--openshift", "4.20"),
            "openshift/release-4.20/config.openshift.io_clusterimagepolicies-Default.yaml",
            "v1",
        ),
        ("kyverno", (), "kyverno/kyverno.io_clusterpolicies.yaml", "v1"),
    ],
)
def test_the_cluster_policies_are_valid_against_their_crds(
    library: tuple[Path, Path], form: str, extra: tuple[str, ...], crd: str, version: str
) -> None:
    """Each document as `invoke trust-policy` prints it: the schema of the release that reads
    it, and its CEL rules (the scope's, the key's)."""
    versions, _ = library
    document = yaml.safe_load(trust_policy(versions, form, *extra))
    assert document["apiVersion"].endswith("/" + version)
    assert crd_errors(CRDS / crd, version, document) == []
    assert cel_errors(CRDS / crd, version, document) == []
    signing = versions_file.load(versions).image_signing
    assert signing is not None
    pem = signing.public_key.read_text()
    if form == "clusterimagepolicy":
        # The CRD's CEL rules (not JSON Schema): keyData is the PEM public key, base64-encoded.
        key_data = document["spec"]["policy"]["rootOfTrust"]["publicKey"]["keyData"]
        decoded = base64.b64decode(key_data).decode()
        assert decoded == pem and decoded.startswith("-----BEGIN PUBLIC KEY-----")
        assert 68 <= len(key_data) <= 8192
    else:
        (rule,) = document["spec"]["rules"]
        (check,) = rule["verifyImages"]
        assert check["attestors"][0]["entries"][0]["keys"]["publicKeys"] == pem
