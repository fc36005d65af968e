"""Every published image stays signed by the key the library names, without a rebuild: a
library that turns `[cosign]` on has its up-to-date images signed and attested where they are,
by digest; rotating the key signs them again with the new one. Real cosign, real registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from habana_tasks.build import labels
from habana_tasks.config import versions_file
from habana_tasks.core.errors import OK, TARGET_FAILED
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import cosign, signature_check
from tests.integration.conftest import KERNELS, UpstreamFixture
from tests.keys import build_signed, cosign_key_pair, verify

pytestmark = [pytest.mark.integration]


def with_key(versions: Path, key: Path, public: Path) -> None:
    """The versions file's [cosign] naming this key pair (added, or replaced)."""
    text = versions.read_text().split("\n[cosign]\n", 1)[0]
    versions.write_text(text + f'\n[cosign]\nkey = "{key}"\npublic_key = "{public}"\n')


def newest_report(cache: Path) -> list[dict[str, object]]:
    """The results in report.json of the newest build run under the cache."""
    newest = max(cache.glob("logs/*/report.json"), key=lambda p: p.stat().st_mtime)
    found = json.loads(newest.read_text())
    assert isinstance(found, list)
    return found


def test_turning_cosign_on_then_rotating_the_key_signs_every_image_and_rebuilds_none(
    test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    versions = test_upstream.versions(
        tmp_path / "versions.toml", KERNELS, repository="library/signed-later"
    )
    cache = tmp_path / "cache"
    for kernel in KERNELS:
        code, out = build_signed(versions, cache, "--no-load-test", kernel=kernel)
        assert code == OK, out
    targets = versions_file.load(versions).targets
    registry = RegistryClient([test_upstream.upstream.registry])
    digests = {t.tag: registry.inspect(t.image).digest for t in targets}

    first = cosign_key_pair(tmp_path / "first")
    with_key(versions, *first)
    code, results, out = verify(versions, cache)
    assert code == TARGET_FAILED and not any(r["signed"] for r in results), out
    for kernel in KERNELS:
        started = time.monotonic()
        code, out = build_signed(versions, cache, "--no-load-test", kernel=kernel)
        assert code == OK, out
        (result,) = newest_report(cache)
        assert result["action"] == "sign" and result["status"] == "ok", result
        assert "no signature by the library's key: signed, not rebuilt" in str(result["detail"])
        print(f"signed {kernel} in {time.monotonic() - started:.1f} s")
    # No tag moved, no image rebuilt: the same digests, now each signed naming its pair.
    assert {t.tag: registry.inspect(t.image).digest for t in targets} == digests
    code, results, out = verify(versions, cache)
    assert code == OK and all(r["ok"] for r in results), out
    pem = cosign.public_key(first[1])
    for t in targets:
        found = signature_check.attached(
            registry, t.repository, str(digests[t.tag]), pem, labels.pair_identity(t)
        )
        assert found.missing() is None, found

    second = cosign_key_pair(tmp_path / "second")
    with_key(versions, *second)
    code, out = build_signed(versions, cache, "--no-load-test", kernel=KERNELS[0])
    assert code == OK, out
    (result,) = newest_report(cache)
    assert result["action"] == "sign", result
    code, results, out = verify(versions, cache, "--kernel", KERNELS[0])
    assert code == OK, out
    # Signed under the new key, the same image; the old key's signature stays beside it.
    assert registry.inspect(targets[0].image).digest == digests[targets[0].tag]
    # Nothing left to sign: the next run skips it.
    code, out = build_signed(versions, cache, "--no-load-test", kernel=KERNELS[0])
    assert code == OK, out
    assert [r["action"] for r in newest_report(cache)] == ["skip"], out
