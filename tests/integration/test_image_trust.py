"""Signed images end to end with the real cosign against a real registry: pushed by digest,
signed there, and only then tagged; a run that signs again adds no signature; a key that does
not open stops the run before anything is built; the password reaches cosign only."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import local_upstream
from habana_tasks.build import labels
from habana_tasks.config import versions_file
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import ImageSigning
from habana_tasks.core.errors import BAD_INPUT, OK, TARGET_FAILED, CommandError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import Podman
from habana_tasks.maintenance import prune as prune_module
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.trust import attachments as trust_attachments
from habana_tasks.trust import cosign
from habana_tasks.trust import provenance as provenance_model
from habana_tasks.trust.sbom import accounted_for, image_files
from tests.conftest import ROOT, invoke_argv
from tests.integration.conftest import DRIVER, KERNELS, UpstreamFixture
from tests.keys import COSIGN_PASSWORD, build_signed, cosign_key_pair, invoke_task, verify
from tests.watch import argv_snapshots

pytestmark = [pytest.mark.integration, pytest.mark.reliability("secrets")]


def attached(registry: RegistryClient, repository: str, digest: str, suffix: str) -> int:
    """How many signatures (.sig) or attestations (.att) are attached to the image."""
    tag = digest.replace(":", "-") + suffix
    if tag not in registry.list_tags(repository):
        return 0
    manifest = registry.get_manifest(ImageReference.parse(f"{repository}:{tag}")).json()
    return len(manifest["layers"])


def statement(verified: list[dict[str, Any]]) -> dict[str, Any]:
    """The one in-toto statement cosign verified (its DSSE payload, decoded)."""
    (envelope,) = verified
    decoded: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return decoded


@pytest.fixture(scope="module")
def signing_library(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("cosign")
    key, public = cosign_key_pair(work / "keys")
    versions = test_upstream.versions(
        work / "versions.toml", KERNELS[:1], repository="library/cosigned"
    )
    versions.write_text(
        versions.read_text() + f'\n[cosign]\nkey = "{key}"\npublic_key = "{public}"\n'
    )
    return versions, public, work


def test_an_image_is_signed_by_digest_before_its_tag_moves(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture
) -> None:
    versions, public, work = signing_library
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=argv_snapshots, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        code, out = build_signed(versions, work / "cache", "--no-load-test")
    finally:
        stop.set()
        watcher.join()
    assert code == OK, out
    target = versions_file.load(versions).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    digest = registry.inspect(target.image).digest
    assert digest is not None
    # cosign's own verification, with the public key, of what the tag names.
    tool = cosign.find(ProcessRunner(), ROOT)
    insecure = frozenset({test_upstream.upstream.registry})
    verified = cosign.verify(tool, public, target.image, insecure)
    assert [v["critical"]["image"]["docker-manifest-digest"] for v in verified] == [digest]
    assert attached(registry, target.repository, digest, ".sig") == 1
    # Both attestations verify with the same key, and say what the image is.
    sbom = statement(cosign.verify_attestation(tool, public, target.image, cosign.SBOM, insecure))
    assert sbom["predicateType"] == cosign.PREDICATE_TYPES[cosign.SBOM]
    assert sbom["subject"][0]["digest"]["sha256"] == digest.split(":")[1]
    rootfs = work / "rootfs.tar"
    Podman(ProcessRunner()).export_rootfs(target.image, rootfs)
    files = image_files(rootfs)
    assert accounted_for(sbom["predicate"], files) == []
    components = {c["name"]: c for c in sbom["predicate"]["components"]}
    module = components[f"/opt/lib/modules/{target.kernel}/extra/habanalabs.ko"]
    props = {p["name"].split(":")[-1]: p["value"] for p in module["properties"]}
    assert props["kind"] == "kernel module" and props["vermagic"].startswith(target.kernel)
    assert module["licenses"] == [{"license": {"name": "GPL v2"}}]  # MODULE_LICENSE("GPL v2")
    # Each tool and library copied in names the toolkit package it came from.
    copied = [c for c in components.values() if c["name"].startswith("/usr/")]
    assert copied
    for component in copied:
        said = {p["name"].split(":")[-1]: p["value"] for p in component["properties"]}
        assert said["kind"] == "tool or library", component
        assert said.get("toolkit-package"), component
    cp = components["/usr/bin/cp"]
    assert {"name": "io.habana-ai-driver:toolkit-package", "value": "coreutils"} in cp["properties"]
    assert {"name": "io.habana-ai-driver:mode", "value": "0755"} in cp["properties"]
    # The package's purl is its RPM header's: name, version-release, arch.
    driver = next(c for c in components.values() if c.get("purl", "").startswith("pkg:rpm/"))
    assert driver["purl"].startswith(f"pkg:rpm/habanalabs@{target.driver}.el8?arch=noarch")
    provenance = statement(
        cosign.verify_attestation(tool, public, target.image, cosign.PROVENANCE, insecure)
    )
    assert provenance["predicateType"] == cosign.PREDICATE_TYPES[cosign.PROVENANCE]
    resolved = {
        d["name"]: d for d in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    }
    toolkit = registry.resolve(target.toolkit_image, "x86_64")
    assert resolved["toolkit image"]["digest"]["sha256"] == toolkit.digest.split(":")[1]
    # The builder is the key that vouches and the kind of runner; the invocation is this run's.
    run = provenance["predicate"]["runDetails"]
    key = provenance_model.key_id(public.read_text())
    assert run["builder"]["id"] == f"urn:habana-ai-driver:builder:local:{key}"
    assert run["metadata"]["invocationID"].startswith("urn:habana-ai-driver:run:")
    assert socket.gethostname() not in json.dumps(provenance)
    assert attached(registry, target.repository, digest, ".att") == 2
    # The password reached cosign through its environment only: no argv, log or report.
    assert not [line for line in seen if COSIGN_PASSWORD in line]
    logged = [
        p
        for p in (work / "cache").rglob("*")
        if p.is_file() and COSIGN_PASSWORD.encode() in p.read_bytes()
    ]
    assert logged == [] and COSIGN_PASSWORD not in out

    # Rebuilt to the same digest and signed again: still one signature.
    code, out = build_signed(versions, work / "cache", "--no-load-test", "--force")
    assert code == OK, out
    assert registry.inspect(target.image).digest == digest
    assert attached(registry, target.repository, digest, ".sig") == 1
    assert attached(registry, target.repository, digest, ".att") == 2


def test_a_key_that_does_not_open_stops_the_run_before_any_build(
    signing_library: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    versions, _, _ = signing_library
    code, out = build_signed(versions, tmp_path / "cache", "--force", password="not the password")
    assert code == BAD_INPUT, out
    assert "cosign cannot open the key (wrong password?)" in out and "Traceback" not in out
    assert not list((tmp_path / "cache").glob("logs/*/*.log"))  # nothing was built


def test_a_public_key_that_is_not_the_keys_pair_is_refused_before_any_build(
    signing_library: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    versions, _, _ = signing_library
    _, other = cosign_key_pair(tmp_path / "other")
    text = versions.read_text()
    mixed = tmp_path / "versions.toml"
    mixed.write_text(text[: text.index("public_key = ")] + f'public_key = "{other}"\n')
    code, out = build_signed(mixed, tmp_path / "cache", "--force")
    assert code == BAD_INPUT, out
    assert "not the public key of" in out
    assert json.dumps(str(other))[1:-1] in out


def kmm_module(versions: Path, cache: Path, *extra: str) -> tuple[int, dict[str, str], str]:
    """`invoke kmm-module` as a user runs it: per kernel, the image its mapping names."""
    done = invoke_task(cache, "kmm-module", "--driver", DRIVER, "--versions", str(versions), *extra)
    module = yaml.safe_load(done.stdout) if done.returncode == 0 else None
    mappings = module["spec"]["moduleLoader"]["container"]["kernelMappings"] if module else []
    pulled = {m["literal"]: m["containerImage"] for m in mappings}
    return done.returncode, pulled, done.stdout + done.stderr


def copy_of(signing_library: tuple[Path, Path, Path], repository: str, to: Path) -> Path:
    """The signing library's versions file, naming a repository of the caller's own."""
    versions, _, _ = signing_library
    to.write_text(versions.read_text().replace("library/cosigned", repository))
    return to


def test_invoke_verify_accepts_the_library_and_names_a_tampered_attestation(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    versions = copy_of(signing_library, "library/cosigned-tampered", tmp_path / "v.toml")
    code, out = build_signed(versions, tmp_path / "cache", "--no-load-test")
    assert code == OK, out
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == OK, out
    (result,) = results
    assert (result["ok"], result["signed"], result["sbom"], result["provenance"]) == (
        True, True, True, True,
    )  # fmt: skip
    # One byte of the SBOM's payload changed in the registry, its signature kept.
    target = versions_file.load(versions).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    digest = result["digest"]
    att = ImageReference.parse(f"{target.repository}:{digest.replace(':', '-')}.att")
    manifest = registry.get_manifest(att).json()
    layer = next(
        each for each in manifest["layers"] if "cyclonedx" in each["annotations"]["predicateType"]
    )
    envelope = json.loads(registry.get_blob(att, layer["digest"]))
    payload = base64.b64decode(envelope["payload"]).replace(b'"GPL v2"', b'"GPL v3"')
    envelope["payload"] = base64.b64encode(payload).decode()
    body = json.dumps(envelope).encode()
    layer["digest"], layer["size"] = registry.put_blob(att, body), len(body)
    registry.put_manifest(att, json.dumps(manifest).encode(), manifest["mediaType"])
    tool = cosign.find(ProcessRunner(), ROOT)
    with pytest.raises(CommandError):
        cosign.verify_attestation(
            tool, signing_library[1], target.image, cosign.SBOM,
            frozenset({test_upstream.upstream.registry}),
        )  # fmt: skip
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == TARGET_FAILED, out
    (result,) = results
    assert (result["signed"], result["sbom"], result["provenance"]) == (True, False, True)
    assert any(p.startswith("SBOM attestation: ") for p in result["problems"]), result


def test_invoke_verify_names_a_signed_sbom_that_lies_and_an_unsigned_image(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    versions = copy_of(signing_library, "library/cosigned-lie", tmp_path / "v.toml")
    code, out = build_signed(versions, tmp_path / "cache", "--no-load-test")
    assert code == OK, out
    target = versions_file.load(versions).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    digest = registry.inspect(target.image).digest
    assert digest is not None
    # An SBOM signed with the library's own key whose module hash is not the image's.
    tool = cosign.find(ProcessRunner(), ROOT)
    insecure = frozenset({test_upstream.upstream.registry})
    sbom = statement(cosign.verify_attestation(
        tool, signing_library[1], target.image, cosign.SBOM, insecure
    ))["predicate"]  # fmt: skip
    module = f"/opt/lib/modules/{target.kernel}/extra/habanalabs.ko"
    for component in sbom["components"]:
        if component["name"] == module:
            component["hashes"][0]["content"] = "0" * 64
    lie = tmp_path / "lie.json"
    lie.write_text(json.dumps(sbom))
    key = Path(str(signing_library[1]).replace(".pub", ".key"))
    signing = ImageSigning(str(key), key, signing_library[1])
    cosign.attest(
        tool, signing, COSIGN_PASSWORD, f"{target.repository}@{digest}", cosign.SBOM, lie, insecure
    )
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == TARGET_FAILED, out
    assert results[0]["problems"] == [f"SBOM: {module}: the SBOM says sha256 {'0' * 64}"]

    # The tag moved onto an image nobody signed: refused by name, nothing else verified.
    test_upstream.runner.run(["podman", "tag", local_upstream.LOCAL_BASE, target.image])
    test_upstream.runner.run(["podman", "push", "--quiet", "--tls-verify=false", target.image])
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == TARGET_FAILED, out
    (result,) = results
    assert (result["signed"], result["sbom"], result["provenance"]) == (False, False, False)
    assert result["problems"][0].startswith("signature: "), result


def test_a_tag_moved_onto_another_pairs_signed_image_is_refused_naming_both(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """Both pairs signed with the library's key; pair B's tag is then made to name pair A's
    signed image (same repository, digest kept). cosign's signature check alone passes it;
    `invoke verify` refuses B by the image's labels, the provenance and the signature's
    annotations, each naming both pairs; cosign itself refuses it once asked for B's pair.
    `invoke kmm-module` pins each kernel to the digest it verified (--by-tag: the tag), and
    writes nothing once B's tag names A's image."""
    versions = copy_of(signing_library, "library/cosigned-swap", tmp_path / "v.toml")
    versions.write_text(
        versions.read_text() + f'\n[[kernels]]\nrelease = "{KERNELS[1]}"\ndrivers = ["{DRIVER}"]\n'
    )
    for kernel in KERNELS:
        code, out = build_signed(versions, tmp_path / "cache", "--no-load-test", kernel=kernel)
        assert code == OK, out
    a, b = versions_file.load(versions).targets
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == OK and [r["ok"] for r in results] == [True, True], out
    repository = versions_file.load(versions).repository
    code, pulled, out = kmm_module(versions, tmp_path / "cache")
    assert code == OK, out
    verified = {
        t.kernel: f"{repository}@{r['digest']}" for t, r in zip((a, b), results, strict=True)
    }
    assert pulled == verified
    assert kmm_module(versions, tmp_path / "cache", "--by-tag")[1] == {
        t.kernel: t.image for t in (a, b)
    }
    test_upstream.runner.run(
        [
            "skopeo", "copy", "--quiet", "--preserve-digests",
            "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{a.image}", f"docker://{b.image}",
        ]
    )  # fmt: skip
    tool = cosign.find(ProcessRunner(), ROOT)
    insecure = frozenset({test_upstream.upstream.registry})
    assert cosign.verify(tool, signing_library[1], b.image, insecure)  # the key alone: passes
    code, results, out = verify(versions, tmp_path / "cache")
    assert code == TARGET_FAILED, out
    ok_a, swapped = results
    assert ok_a["ok"] and swapped["signed"], results
    asked = f"{DRIVER} for {b.kernel} (tag {b.tag})"
    assert swapped["problems"] == [
        f"pair: the image is {DRIVER} for {a.kernel} (its labels), not {asked}",
        f"pair: the provenance is of {DRIVER} for {a.kernel} (tag {a.tag}), not {asked}",
        f"pair: the SBOM is of {a.kernel} (tag {a.tag}), not {asked}",
        f"signature: none names {asked} (signed for: {DRIVER} for {a.kernel})",
    ], swapped
    code, pulled, out = kmm_module(versions, tmp_path / "cache")
    assert code == TARGET_FAILED and not pulled, out
    assert f"{b.image}: pair: the image is {DRIVER} for {a.kernel} (its labels), not {asked}" in out
    with pytest.raises(CommandError):  # a node's cosign asked for B's pair refuses it too
        tool.run(
            ["verify", "--key", str(signing_library[1]), "--insecure-ignore-tlog",
             f"--annotations={labels.TAG}={b.tag}", *cosign.registry_flags(b.image, insecure),
             b.image],
            reference=b.image, keep_output=True,
        )  # fmt: skip


def test_a_tag_moved_back_onto_an_older_signed_build_of_its_pair_is_refused_naming_both(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """Two signed builds of the same pair (the second from another source date); the tag then
    made to name the first again. Its labels, provenance and signature all name the pair: only
    the signatures' publication times tell the builds apart. `invoke verify` and
    `invoke kmm-module` refuse it, naming the newer build."""
    versions = copy_of(signing_library, "library/cosigned-older", tmp_path / "v.toml")
    code, out = build_signed(versions, tmp_path / "cache", "--no-load-test")
    assert code == OK, out
    code, (first,), out = verify(versions, tmp_path / "cache")
    assert code == OK, out
    code, out = build_signed(
        versions, tmp_path / "cache", "--no-load-test", "--force",
        environment={"SOURCE_DATE_EPOCH": "1700000000"},
    )  # fmt: skip
    assert code == OK, out
    code, (second,), out = verify(versions, tmp_path / "cache")
    assert code == OK and second["digest"] != first["digest"], out
    (target,) = versions_file.load(versions).targets
    test_upstream.runner.run(
        [
            "skopeo", "copy", "--quiet", "--preserve-digests",
            "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{target.repository}@{first['digest']}", f"docker://{target.image}",
        ]
    )  # fmt: skip
    code, (older,), out = verify(versions, tmp_path / "cache")
    assert code == TARGET_FAILED and older["digest"] == first["digest"], out
    assert older["signed"] and older["sbom"] and older["provenance"], older
    (problem,) = older["problems"]
    assert problem == (
        f"not the newest: {target.repository}@{second['digest']} is a later signed build of "
        f"this pair (published {second['published']}; this one {first['published']})"
    ), problem
    assert first["published"] < second["published"]
    code, pulled, out = kmm_module(versions, tmp_path / "cache")
    assert code == TARGET_FAILED and not pulled and "not the newest" in out, out


def test_a_signature_the_registry_refuses_fails_the_target_and_moves_no_tag(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """cosign that opens the key but whose signing fails (as a registry refusing the .sig
    upload makes it): exit 3, the image is in the registry by digest only, no tag names it."""
    versions = copy_of(signing_library, "library/cosigned-refused", tmp_path / "v.toml")
    real = cosign.find(ProcessRunner(), ROOT).path
    wrapper = tmp_path / "bin" / "cosign"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = sign ] && [ "$2" != --help ]; then\n'
        '  echo "Error: signing: PUT .sig: 403 Forbidden" >&2; exit 1\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    done = subprocess.run(
        invoke_argv("build", "--kernel", KERNELS[0], "--versions", str(versions), "--no-load-test"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={
            **os.environ,
            "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}",
            "HABANA_CACHE_DIR": str(tmp_path / "cache"),
            cosign.PASSWORD_VARIABLE: COSIGN_PASSWORD,
        },
    )
    out = done.stdout + done.stderr
    assert done.returncode == TARGET_FAILED, out
    assert "403 Forbidden" in out
    target = versions_file.load(versions).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    assert registry.inspect(target.image).existence is Existence.ABSENT


def test_prune_during_a_publish_leaves_the_image_being_signed_and_its_signature(
    signing_library: tuple[Path, Path, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """`invoke prune --apply` run while a build has pushed its image by digest and signed it,
    before its tag moves (cosign's sign, wrapped, runs it at that very moment): the image and
    its signature stay (a run may be publishing it); the build then tags it and it verifies.
    An image whose pair is dropped goes, and its attachments after it."""
    versions = copy_of(signing_library, "library/cosigned-prune", tmp_path / "v.toml")
    real = cosign.find(ProcessRunner(), ROOT).path
    said = tmp_path / "prune.out"
    wrapper = tmp_path / "bin" / "cosign"
    wrapper.parent.mkdir()
    prune = " ".join(invoke_argv("prune", "--versions", str(versions), "--apply"))
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = sign ] && [ "$2" != --help ]; then\n'
        f'  {real} "$@" || exit $?\n'
        f'  (cd {ROOT} && {prune}) > {said} 2>&1; echo "exit $?" >> {said}\n'
        "  exit 0\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    code, out = build_signed(
        versions, tmp_path / "cache", "--no-load-test",
        environment={"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert code == OK, out
    pruned = said.read_text()
    assert pruned.rstrip().endswith("exit 0") and "deleted" not in pruned, pruned
    code, (result,), out = verify(versions, tmp_path / "cache")
    assert code == OK and result["ok"], out

    # Its pair dropped from the matrix: prune deletes the image, then its attachments.
    (target,) = versions_file.load(versions).targets
    digest = result["digest"]
    registry = RegistryClient([test_upstream.upstream.registry])
    config = replace(versions_file.load(versions), targets=())
    later = datetime.now(UTC) + prune_module.LEASE + timedelta(minutes=1)
    _, outcomes = prune_module.prune_library(
        config, registry, older_than_days=None, apply=True, now=later
    )
    deleted = [(o.item.tag, o.deleted) for o in outcomes]
    signature, attestations = trust_attachments.tags_of(digest)
    assert deleted[0] == (target.tag, True), deleted
    assert {(signature, True), (attestations, True)} <= set(deleted), deleted
    assert registry.inspect(f"{target.repository}@{digest}").existence is Existence.ABSENT
    assert not [t for t in registry.list_tags(target.repository) if digest[7:] in t]
