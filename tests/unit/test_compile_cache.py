from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from habana_tasks.build import compile as compiling
from habana_tasks.build.compile_cache import FILES, MANIFEST, CompileCache, CompileKey, Lookup
from habana_tasks.core.errors import HabanaError
from tests.conftest import invoke_argv
from tests.samples import INPUTS, ONE_INPUT_CHANGED, TARGET

ROOT = Path(__file__).resolve().parents[2]


def key(**changed: str) -> CompileKey:
    values = {"kernel release": "6.1.0-55-amd64", "driver package": "aa", "modules": "habanalabs"}
    values.update(changed)
    return CompileKey(tuple(values.items()))


def fetched(cache: CompileCache, k: CompileKey) -> Lookup:
    """A build's read of the cache: the entry copied into a folder of its own."""
    return cache.fetch(k, cache.root.parent / f"out-{uuid.uuid4().hex}")


def stored(cache: CompileCache, k: CompileKey, content: bytes = b"module") -> Path:
    """An entry as a compile leaves it: a module, a directory and KMM's absolute host link."""
    staged = cache.staging()
    modules = staged / FILES / "lib" / "modules" / "6.1.0-55-amd64"
    (modules / "extra").mkdir(parents=True)
    (modules / "extra" / "habanalabs.ko").write_bytes(content)
    (modules / "extra" / "habanalabs.ko").chmod(0o644)
    (modules / "host").symlink_to("/host/lib/modules/6.1.0-55-amd64")
    return cache.store(k, staged)


def test_a_stored_entry_is_a_hit_with_the_same_files(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    entry = stored(cache, key())
    found = fetched(cache, key())
    assert found.hit and found.files is not None and found.files != entry
    assert "compile cache hit" in found.note
    files = found.files  # a copy, checked against the entry's manifest
    assert files.stat().st_mode & 0o777 == 0o755
    module = files / "lib/modules/6.1.0-55-amd64/extra/habanalabs.ko"
    assert module.read_bytes() == b"module"
    assert os.readlink(files / "lib/modules/6.1.0-55-amd64/host") == (
        "/host/lib/modules/6.1.0-55-amd64"
    )
    assert not any((cache.tmp).iterdir()), "the staging directory was moved, not copied"
    stats = cache.stats()
    assert (stats.entries, stats.size, stats.hits, stats.misses) == (1, 6, 1, 0)


def test_a_miss_names_the_inputs_that_differ_from_the_nearest_entry(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    assert "none to compare with" in (fetched(cache, key()).note)
    stored(cache, key())
    stored(cache, key(**{"kernel release": "6.1.0-56-amd64", "modules": "x"}))
    found = fetched(cache, key(**{"driver package": "bb"}))
    assert not found.hit
    assert found.note.endswith("(the nearest differs in: driver package)")
    assert cache.stats().misses == 2


@pytest.mark.parametrize(
    "damage",
    ["truncated", "changed", "mode", "extra", "missing", "manifest"],
)
def test_a_corrupt_entry_is_a_named_miss_and_is_removed(tmp_path: Path, damage: str) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    files = stored(cache, key())
    module = files / "lib/modules/6.1.0-55-amd64/extra/habanalabs.ko"
    if damage == "truncated":
        module.write_bytes(b"mod")
    elif damage == "changed":
        module.write_bytes(b"MODULE")
    elif damage == "mode":
        module.chmod(0o600)
    elif damage == "extra":
        (files / "stray").write_text("x")
    elif damage == "missing":
        module.unlink()
    else:
        (files.parent / MANIFEST).write_text("{not json")
    found = fetched(cache, key())
    assert not found.hit
    assert "was corrupt" in found.note and "removed" in found.note
    if damage != "manifest":
        assert ("stray" if damage == "extra" else "habanalabs.ko") in found.note
    assert not files.exists()
    stored(cache, key())
    assert fetched(cache, key()).hit, "compiled again, the entry serves"


def test_least_recently_used_entries_go_beyond_max_size(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 25)  # two entries of 10 bytes fit
    first = stored(cache, key(modules="1"), b"0123456789")
    stored(cache, key(modules="2"), b"0123456789")
    old = 1_000_000_000.0
    for number, when in (("1", old + 10), ("2", old)):  # 1 used after 2
        os.utime(cache.entries / key(modules=number).digest / MANIFEST, (when, when))
    stored(cache, key(modules="3"), b"0123456789")
    assert fetched(cache, key(modules="1")).hit and first.exists()
    assert not fetched(cache, key(modules="2")).hit, "the least recently used went"
    assert fetched(cache, key(modules="3")).hit
    assert cache.stats().entries == 2


def test_max_size_zero_keeps_only_the_entry_just_stored(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 0)
    stored(cache, key(modules="1"))
    stored(cache, key(modules="2"))
    assert [p.name for p in cache.entries.iterdir()] == [key(modules="2").digest]


def test_storing_again_replaces_the_entry(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    stored(cache, key(), b"old")
    files = stored(cache, key(), b"new")
    assert (files / "lib/modules/6.1.0-55-amd64/extra/habanalabs.ko").read_bytes() == b"new"
    assert fetched(cache, key()).hit


def test_clear_removes_every_entry_and_the_counters(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    stored(cache, key(modules="1"))
    stored(cache, key(modules="2"))
    fetched(cache, key(modules="1"))
    assert cache.clear() == 2
    stats = cache.stats()
    assert (stats.entries, stats.size, stats.hits, stats.misses) == (0, 0, 0, 0)
    assert cache.clear() == 0


def test_an_entry_records_its_inputs_and_every_file(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", 10**9)
    files = stored(cache, key())
    entry = files.parent
    assert json.loads((entry / "key.json").read_text()) == dict(key().inputs)
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["lib/modules/6.1.0-55-amd64/extra/habanalabs.ko"][0:3] == ["f", 0o644, 6]
    assert manifest["lib/modules/6.1.0-55-amd64/host"] == ["l", "/host/lib/modules/6.1.0-55-amd64"]


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_recipe_digest_covers_the_compile_stages_only() -> None:
    base = compiling.recipe_digest(DOCKERFILE)
    final_changed = DOCKERFILE.replace("USER 1001", "USER 1002")
    tools_changed = DOCKERFILE.replace("cp -L", "cp -L -p", 1)
    comment_added = DOCKERFILE.replace(
        "FROM scratch AS compiled", "# why\nFROM scratch AS compiled"
    )
    for unchanged in (final_changed, tools_changed, comment_added):
        assert unchanged != DOCKERFILE
        assert compiling.recipe_digest(unchanged) == base
    builder_changed = DOCKERFILE.replace('make -j"$(nproc)"', "make -j1")
    assert builder_changed != DOCKERFILE
    assert compiling.recipe_digest(builder_changed) != base
    arg_changed = DOCKERFILE.replace("ARG BASE_IMAGE=scratch", "ARG BASE_IMAGE=busybox")
    assert compiling.recipe_digest(arg_changed) != base, "a global ARG may reach the compile"


def test_a_dockerfile_without_the_compile_stages_is_named() -> None:
    with pytest.raises(HabanaError, match="no stage named compiled"):
        compiling.recipe_digest(DOCKERFILE.replace("AS compiled", "AS other"))


# Of the inputs that decide "up to date", what the compiler reads (the rest only assemble the
# image again: the toolkit's and Dockerfile's part of the key is digested from what they hold).
READ_BY_THE_COMPILE = {
    "driver package",
    "firmware package",
    "driver git SHA",
    "modules",
    "signing certificate",
}


@pytest.mark.parametrize("name", list(ONE_INPUT_CHANGED))
def test_the_compile_key_changes_only_with_what_the_compile_reads(name: str) -> None:
    base = compiling.compile_key(TARGET, INPUTS, "e" * 64, "f" * 64)
    target, inputs = ONE_INPUT_CHANGED[name]
    changed = compiling.compile_key(target, inputs, "e" * 64, "f" * 64)
    assert (changed.digest != base.digest) == (name in READ_BY_THE_COMPILE)


def test_the_compile_key_holds_the_release_the_toolkits_content_and_the_recipe() -> None:
    base = compiling.compile_key(TARGET, INPUTS, "e" * 64, "f" * 64)
    assert [name for name, _ in base.inputs] == [
        "kernel release",
        "toolkit build tree and toolchain",
        "driver version",
        "driver package",
        "firmware package",
        "driver git SHA",
        "modules",
        "compile recipe",
        "signing certificate",
    ]
    others = [
        compiling.compile_key(replace(TARGET, kernel="6.1.0-57-amd64"), INPUTS, "e" * 64, "f" * 64),
        compiling.compile_key(replace(TARGET, driver="6.1.0-2"), INPUTS, "e" * 64, "f" * 64),
        compiling.compile_key(TARGET, INPUTS, "7" * 64, "f" * 64),
        compiling.compile_key(TARGET, INPUTS, "e" * 64, "6" * 64),
        # The library's repository and base name are not read.
        compiling.compile_key(
            replace(TARGET, repository="r.example/other", base_image=None),
            INPUTS,
            "e" * 64,
            "f" * 64,
        ),
    ]
    assert [k.digest != base.digest for k in others] == [True, True, True, True, False]


def invoke_cache(
    tmp_path: Path, *args: str, max_size: str = '"1M"'
) -> subprocess.CompletedProcess[str]:
    versions = tmp_path / "versions.toml"
    versions.write_text(
        '[library]\nrepository = "r.example/lib/drv"\n[toolkit]\nimage = "r.example/dtk:{kernel}"\n'
        '[driver]\npackage_url = "https://vault.example/habanalabs-{driver}.el8.noarch.rpm"\n'
        f"[cache]\nmax_size = {max_size}\n"
        '[[kernels]]\nrelease = "6.1.0-55-amd64"\ndrivers = ["6.1.0-1"]\n'
    )
    return subprocess.run(
        invoke_argv("cache", "--versions", str(versions), *args),
        cwd=ROOT,
        env={**os.environ, "HABANA_COMPILE_CACHE_DIR": str(tmp_path / "compile"), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_invoke_cache_shows_the_counts_and_clear_empties_it(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "compile", 10**9)
    stored(cache, key(modules="1"), b"0123456789")
    stored(cache, key(modules="2"), b"0123456789")
    fetched(cache, key(modules="1"))
    fetched(cache, key(modules="3"))
    shown = invoke_cache(tmp_path, "--stats")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "MiB" in line and "│" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [
        "2",
        "0.0 MiB",
        "1.0 MiB",
        "1",
        "1",
    ], shown.stdout
    assert f"compile cache: {tmp_path / 'compile'}" in shown.stdout
    cleared = invoke_cache(tmp_path, "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "compile cache cleared: 2 entries removed" in cleared.stdout
    assert CompileCache(tmp_path / "compile", 10**9).stats().entries == 0


def test_invoke_cache_with_a_bad_size_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = invoke_cache(tmp_path, "--clear", max_size='"lots"')
    assert done.returncode == 2
    assert "cache.max_size" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "compile").exists()


def test_a_cache_that_cannot_be_read_or_written_is_a_named_miss(tmp_path: Path) -> None:
    """A real OSError at every access (the cache's root is a file): lookups miss and say why,
    the counters say they were not updated, staging refuses (the build then compiles into its
    own folder, tested with podman in the rootless session)."""
    (tmp_path / "not-a-directory").write_text("x")
    cache = CompileCache(tmp_path / "not-a-directory" / "compile", 10**9)
    found = fetched(cache, key())
    assert not found.hit
    assert found.note == "compile cache miss: the cache cannot be read (Not a directory)"
    with pytest.raises(OSError):
        cache.staging()


def test_an_entry_another_user_keeps_is_read_but_not_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CompileCache(tmp_path / "compile", 10**9)
    stored(cache, key())
    real_utime = os.utime

    def refused(path: Path, *args: Any, **kwargs: Any) -> None:
        """Another user's manifest is not ours to touch; the copies we make are."""
        if Path(path).name == MANIFEST:
            raise PermissionError(1, "Operation not permitted")
        real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", refused)
    found = fetched(cache, key())
    assert found.hit
    assert found.note.endswith("(not marked as used: Operation not permitted)")


def test_invoke_cache_on_a_cache_it_cannot_read_is_one_line_and_exit_6(tmp_path: Path) -> None:
    (tmp_path / "compile").write_text("a file where the cache should be")
    done = invoke_cache(tmp_path)
    assert done.returncode == 6, done.stderr
    assert done.stderr.strip().endswith("Not a directory") and "Traceback" not in done.stderr
