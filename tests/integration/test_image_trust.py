"""Signed images end to end with the real cosign against a real registry: pushed by digest,
signed there, and only then tagged; a run that signs again adds no signature; a key that does
not open stops the run before anything is built; the password reaches cosign only."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from habana_tasks.config import versions as config
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import BAD_INPUT, OK
from habana_tasks.core.process import ProcessRunner
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import cosign
from tests.conftest import ROOT, invoke_argv
from tests.integration.conftest import KERNELS, UpstreamFixture
from tests.integration.test_secrets import argv_snapshots

pytestmark = [pytest.mark.integration, pytest.mark.reliability("secrets")]

PASSWORD = "canary-cosign-0c4e1d"


def key_pair(directory: Path) -> tuple[Path, Path]:
    """A cosign key pair made by cosign itself (the password from its environment)."""
    tool = cosign.find(ProcessRunner(), ROOT)
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tool.path, "generate-key-pair", "--output-key-prefix", str(directory / "cosign")],
        env={**os.environ, cosign.PASSWORD_VARIABLE: PASSWORD},
        check=True,
        capture_output=True,
    )
    return directory / "cosign.key", directory / "cosign.pub"


def build(versions: Path, cache: Path, *extra: str, password: str = PASSWORD) -> tuple[int, str]:
    done = subprocess.run(
        invoke_argv("build", "--kernel", KERNELS[0], "--versions", str(versions), *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache), cosign.PASSWORD_VARIABLE: password},
    )
    return done.returncode, done.stdout + done.stderr


def signatures(registry: RegistryClient, repository: str, digest: str) -> int:
    """How many signatures the image's .sig attachment holds (0 without one)."""
    tag = digest.replace(":", "-") + ".sig"
    if tag not in registry.list_tags(repository):
        return 0
    manifest = registry.get_manifest(ImageReference.parse(f"{repository}:{tag}")).json()
    return len(manifest["layers"])


@pytest.fixture(scope="module")
def signing_library(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("cosign")
    key, public = key_pair(work / "keys")
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
        code, out = build(versions, work / "cache", "--no-load-test")
    finally:
        stop.set()
        watcher.join()
    assert code == OK, out
    target = config.load(versions).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    digest = registry.inspect(target.image).digest
    assert digest is not None
    # cosign's own verification, with the public key, of what the tag names.
    tool = cosign.find(ProcessRunner(), ROOT)
    insecure = frozenset({test_upstream.upstream.registry})
    verified = cosign.verify(tool, public, target.image, insecure)
    assert [v["critical"]["image"]["docker-manifest-digest"] for v in verified] == [digest]
    assert signatures(registry, target.repository, digest) == 1
    # The password reached cosign through its environment only: no argv, log or report.
    assert not [line for line in seen if PASSWORD in line]
    logged = [
        p
        for p in (work / "cache").rglob("*")
        if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert logged == [] and PASSWORD not in out

    # Rebuilt to the same digest and signed again: still one signature.
    code, out = build(versions, work / "cache", "--no-load-test", "--force")
    assert code == OK, out
    assert registry.inspect(target.image).digest == digest
    assert signatures(registry, target.repository, digest) == 1


def test_a_key_that_does_not_open_stops_the_run_before_any_build(
    signing_library: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    versions, _, _ = signing_library
    code, out = build(versions, tmp_path / "cache", "--force", password="not the password")
    assert code == BAD_INPUT, out
    assert "cosign cannot open the key (wrong password?)" in out and "Traceback" not in out
    assert not list((tmp_path / "cache").glob("logs/*/*.log"))  # nothing was built


def test_a_public_key_that_is_not_the_keys_pair_is_refused_before_any_build(
    signing_library: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    versions, _, _ = signing_library
    _, other = key_pair(tmp_path / "other")
    text = versions.read_text()
    mixed = tmp_path / "versions.toml"
    mixed.write_text(text[: text.index("public_key = ")] + f'public_key = "{other}"\n')
    code, out = build(mixed, tmp_path / "cache", "--force")
    assert code == BAD_INPUT, out
    assert "not the public key of" in out
    assert json.dumps(str(other))[1:-1] in out
