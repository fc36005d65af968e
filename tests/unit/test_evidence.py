"""What the attestations say of an image: the provenance's builder and invocation (honest about
who vouches, unique, no host name), the packages' purls from their own headers, and the SBOM's
file modes and link targets, which verify compares with the image."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from typing import Any

from habana_tasks.trust import provenance, sbom
from habana_tasks.trust.provenance import ProvenanceInputs
from habana_tasks.trust.sbom import ImageFile, Package, RpmHeader

PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEq8Ym8uCZR8uJgKXhXW9QqzUiFWzC\n"
    "2zXQm6L3QzGkMZkq6iS3WqzO0tTQX8N6mHnZ8nYVwqR5iW7y0pXoM2b4aQ==\n"
    "-----END PUBLIC KEY-----\n"
)
CI = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_RUN_ID": "42",
    "GITHUB_RUN_ATTEMPT": "2",
    "GITHUB_REPOSITORY": "org/lib",
    "GITHUB_SERVER_URL": "https://github.com",
}


def document(environ: dict[str, str], stamp: str = "20261207-000000-abcd") -> dict[str, Any]:
    when = datetime(2026, 12, 7, tzinfo=UTC)
    inputs = ProvenanceInputs(
        "6.1.0-55-amd64", "6.1.0-1", "6.1.0-1-6.1.0-55-amd64", "r.example/lib", "src", "",
        "versions.toml", "0" * 64, (), "0.1.0", stamp, PEM, when, when,
    )  # fmt: skip
    found = json.loads(provenance.predicate(inputs, environ))
    assert isinstance(found, dict)
    return found


def test_the_builder_is_the_key_and_the_runner_kind_never_a_url_from_the_environment() -> None:
    local = document({})["runDetails"]
    on_ci = document(CI)["runDetails"]
    key = provenance.key_id(PEM)
    assert key.startswith("sha256:") and len(key) == 7 + 64
    assert local["builder"]["id"] == f"urn:habana-ai-driver:builder:local:{key}"
    assert on_ci["builder"]["id"] == f"urn:habana-ai-driver:builder:github-actions:{key}"
    assert on_ci["builder"]["version"] == {"habana-tasks": "0.1.0"}
    # The run's URL identifies the invocation, with the attempt and this run's own id.
    run = f"https://github.com/org/lib/actions/runs/42/attempts/2#20261207-000000-abcd/{provenance.RUN}"
    assert on_ci["metadata"]["invocationID"] == run
    assert local["metadata"]["invocationID"] == (
        f"urn:habana-ai-driver:run:20261207-000000-abcd/{provenance.RUN}"
    )
    assert socket.gethostname() not in json.dumps(document({}))


def test_an_attestation_made_after_the_build_says_so() -> None:
    when = datetime(2026, 12, 7, tzinfo=UTC)
    inputs = ProvenanceInputs(
        "k", "d", "t", "r.example/lib", "src", "", "v", "0" * 64, (), "0.1.0", "s", PEM,
        when, when, after_build=True,
    )  # fmt: skip
    said = json.loads(provenance.predicate(inputs, {}))
    assert said["buildDefinition"]["internalParameters"] == {"attestedAfterBuild": True}
    assert "internalParameters" not in document({})["buildDefinition"]


def test_a_packages_purl_is_its_rpm_headers_and_a_file_that_is_not_one_is_generic() -> None:
    header = RpmHeader("habanalabs", "1.16.0", "526.el9", "x86_64", "Habana Labs")
    rpm = Package("driver", "habanalabs-1.16.0-526.el9.x86_64.rpm", "a" * 64,
                  "https://vault.example/h.rpm", "1.16.0-526", rpm=header)  # fmt: skip
    assert str(sbom.package_purl(rpm)) == (
        "pkg:rpm/habana%20labs/habanalabs@1.16.0-526.el9?arch=x86_64"
        "&download_url=https://vault.example/h.rpm"
    )
    tarball = Package("firmware", "fw.tar.gz", "b" * 64, "file:///fw.tar.gz", "1.16.0-526")
    assert str(sbom.package_purl(tarball)) == f"pkg:generic/fw.tar.gz?checksum=sha256:{'b' * 64}"


def sbom_of(*files: ImageFile) -> dict[str, Any]:
    return {
        "components": [
            {
                "type": "file",
                "name": f.path,
                "hashes": [{"alg": "SHA-256", "content": f.sha256}] if f.sha256 else [],
                "properties": [
                    {"name": sbom.PROPERTY + "link", "value": f.link},
                    {"name": sbom.PROPERTY + "mode", "value": f.mode},
                ],
            }
            for f in files
        ]
    }


def test_verify_compares_each_files_mode_and_link_target_with_the_sbom() -> None:
    tool = ImageFile("/opt/bin/kmod", "c" * 64, 10, mode="0755")
    link = ImageFile("/opt/bin/modprobe", link="kmod", mode="0777")
    assert sbom.accounted_for(sbom_of(tool, link), (tool, link)) == []
    writable = ImageFile(tool.path, tool.sha256, 10, mode="4777")
    moved = ImageFile(link.path, link="/tmp/evil", mode="0777")
    assert sbom.accounted_for(sbom_of(tool, link), (writable, moved)) == [
        "/opt/bin/kmod: the SBOM says mode 0755, the image 4777",
        "/opt/bin/modprobe: the SBOM says it links to kmod, the image /tmp/evil",
    ]
