"""The compile cache: the driver's compiled (and, where configured, signed) files, kept as plain
files and keyed by exactly what the compile reads (build/compile.py makes the key), as ccache
keys on what the compiler reads and Bazel's action cache on an action's inputs.

An entry is `entries/<key digest>/`: `files/` (what the Dockerfile's `compiled` stage holds),
`key.json` (the key's inputs: on a miss, the nearest entry says which input differs) and
`manifest.json` (each file's type, mode, size and sha256). A read copies the files out and
checks the copy against the manifest, so what a build uses is what was checked: a corrupt or
truncated entry is a miss that names what differs, and is removed. Entries are made under
`tmp/` and renamed into place, so a reader never sees half of one. A hit touches the manifest;
beyond `max_size`, the least recently used entries go. Hits and misses are counted in
`stats.json` under a lock, across processes; `toolkits/` remembers what each toolkit gives the
compile (a digest per toolkit digest and release).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

FILES = "files"
KEY = "key.json"
MANIFEST = "manifest.json"
STATS = "stats.json"
TOOLKITS = "toolkits"  # what each toolkit gives the compile, by toolkit digest and release
DIGEST = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class CompileKey:
    """The compile's inputs by name, in a fixed order; its digest names the entry."""

    inputs: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dict(self.inputs), sort_keys=True).encode()).hexdigest()

    def differing(self, other: Mapping[str, str]) -> list[str]:
        """The names of the inputs whose value `other` does not share."""
        return [name for name, value in self.inputs if other.get(name) != value]

    @property
    def text(self) -> str:
        """The inputs as the build log shows them, one per line."""
        return "\n".join(f"  {name}: {value}" for name, value in self.inputs)


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer: the entry's files on a hit, and what to say either way."""

    files: Path | None  # where the entry's files were copied, on a hit
    note: str

    @property
    def hit(self) -> bool:
        return self.files is not None


@dataclass(frozen=True)
class CacheStats:
    entries: int
    size: int
    hits: int
    misses: int
    max_size: int


def manifest_of(root: Path) -> dict[str, list[str | int]]:
    """Every path under root: ["d", mode], ["f", mode, size, sha256] or ["l", target]."""
    found: dict[str, list[str | int]] = {}
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ["l", os.readlink(path)]
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ["d", mode]
            elif stat.S_ISREG(info.st_mode):
                found[relative] = ["f", mode, info.st_size, _sha256(path)]
            else:
                found[relative] = ["?", mode]
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _difference(expected: Mapping[str, object], found: Mapping[str, object]) -> str | None:
    """The first path whose recorded and present state differ, said plainly."""
    for path in sorted(set(expected) | set(found)):
        if path not in found:
            return f"{path} is missing"
        if path not in expected:
            return f"{path} is not in its manifest"
        if expected[path] != found[path]:
            return f"{path} differs from its manifest"
    return None


def entry_size(manifest: Mapping[str, list[str | int]]) -> int:
    return sum(int(row[2]) for row in manifest.values() if row[0] == "f")


class CompileCache:
    """Entries under `root`, at most `max_size` bytes of files (least recently used go first)."""

    def __init__(self, root: Path, max_size: int) -> None:
        self.root = root
        self.max_size = max_size
        self.entries = root / "entries"
        self.tmp = root / "tmp"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time updates the counters or evicts."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def staging(self) -> Path:
        """A new, empty directory under tmp/ to compile into; store() moves it into place."""
        path = self.tmp / uuid.uuid4().hex
        (path / FILES).mkdir(parents=True)
        return path

    def fetch(self, key: CompileKey, destination: Path) -> Lookup:
        """The key's entry copied to destination (which must not exist) and checked there
        against its manifest, so what is used is what was checked, whatever another process
        does to the entry meanwhile; else a miss that says why (no entry, and the inputs that
        differ from the nearest one; or what was wrong with this one) and no destination."""
        entry = self.entries / key.digest
        try:
            why = self._nearest(key) if not entry.is_dir() else self._copied(entry, destination)
        except OSError as exc:  # a cache another user keeps, not ours to read
            return Lookup(None, f"compile cache miss: the cache cannot be read ({exc.strerror})")
        counted = self._count("misses" if why else "hits")
        if why is None:
            try:
                os.utime(entry / MANIFEST)  # recently used
            except OSError as exc:  # another user's cache, readable but not ours to write
                counted = f" (not marked as used: {exc.strerror})"
            return Lookup(destination, f"compile cache hit: {key.digest[:16]}{counted}")
        return Lookup(None, f"compile cache miss: {why}{counted}")

    def _copied(self, entry: Path, destination: Path) -> str | None:
        """Why the entry could not serve (None: destination holds its files, checked)."""
        try:
            recorded = json.loads((entry / MANIFEST).read_text())
            shutil.copytree(entry / FILES, destination, symlinks=True)
            difference = _difference(recorded, manifest_of(destination))
        except FileNotFoundError:  # evicted or cleared while it was read: not corrupt
            shutil.rmtree(destination, ignore_errors=True)
            return f"entry {entry.name[:16]} was removed while it was read"
        except (OSError, ValueError) as exc:
            difference = f"it is unreadable ({exc.__class__.__name__})"
        if difference is None:
            return None
        shutil.rmtree(destination, ignore_errors=True)
        try:
            self._discard(entry)
        except OSError as exc:
            return f"entry {entry.name[:16]} is corrupt ({difference}); not removed: {exc.strerror}"
        return f"entry {entry.name[:16]} was corrupt ({difference}); removed"

    def _nearest(self, key: CompileKey) -> str:
        """A miss said usefully: which inputs differ from the entry sharing the most of them."""
        best: list[str] | None = None
        for entry in self._entry_dirs():
            inputs = _read_json(entry / KEY)
            if isinstance(inputs, dict):
                differing = key.differing(inputs)
                if best is None or len(differing) < len(best):
                    best = differing
        if best is None:
            return "no entry for these inputs (none to compare with)"
        return f"no entry for these inputs (the nearest differs in: {', '.join(best)})"

    def _entry_dirs(self) -> list[Path]:
        try:
            return sorted(path for path in self.entries.iterdir() if path.is_dir())
        except FileNotFoundError:
            return []

    def _discard(self, entry: Path) -> None:
        """An entry moved out of entries/ at once (no reader finds half of it), then removed."""
        trash = self.tmp / f"discard-{uuid.uuid4().hex}"
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            entry.rename(trash)
        except FileNotFoundError:  # another process removed it first
            return
        shutil.rmtree(trash)

    def _count(self, field: str) -> str:
        """Add one to a counter; what to add to the note when the cache is not ours to write."""
        try:
            with self._locked():
                counts = _read_json(self.root / STATS)
                counts = counts if isinstance(counts, dict) else {}
                counts[field] = int(counts.get(field, 0)) + 1
                _write_json(self.root / STATS, counts)
        except OSError as exc:
            return f" (statistics not updated: {exc.strerror})"
        return ""

    def store(self, key: CompileKey, staged: Path) -> Path:
        """The staged directory (from staging(), its files/ filled) becomes the key's entry;
        the least recently used entries beyond max_size are evicted (never the new one; a
        reader copies an entry before using it). Returns the entry's files."""
        manifest = manifest_of(staged / FILES)
        _write_json(staged / MANIFEST, manifest)
        _write_json(staged / KEY, dict(key.inputs))
        entry = self.entries / key.digest
        self.entries.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if entry.exists():  # compiled again (--no-compile-cache, or a race): the new one wins
                self._discard(entry)
            staged.rename(entry)
            self._evict(keep=entry)
        return entry / FILES

    def _evict(self, keep: Path) -> None:
        """Least recently used first, until the entries fit in max_size (the new one stays)."""
        sized = []
        for entry in self._entry_dirs():
            recorded = _read_json(entry / MANIFEST)
            size = entry_size(recorded) if isinstance(recorded, dict) else 0
            try:
                used = (entry / MANIFEST).stat().st_mtime
            except FileNotFoundError:
                used = 0.0
            sized.append((used, entry, size))
        total = sum(size for _, _, size in sized)
        for _, entry, size in sorted(sized, key=lambda row: (row[0], row[1].name)):
            if total <= self.max_size:
                break
            if entry != keep:
                self._discard(entry)
                total -= size

    def stats(self) -> CacheStats:
        sizes = [_read_json(entry / MANIFEST) for entry in self._entry_dirs()]
        counts = _read_json(self.root / STATS)
        counts = counts if isinstance(counts, dict) else {}
        return CacheStats(
            len(sizes),
            sum(entry_size(m) for m in sizes if isinstance(m, dict)),
            int(counts.get("hits", 0)),
            int(counts.get("misses", 0)),
            self.max_size,
        )

    def remembered(self, name: str) -> str | None:
        """A digest remembered under name (what a toolkit gives the compile), if any."""
        value = _read_json(self.root / TOOLKITS / f"{name}.json")
        found = value.get("content") if isinstance(value, dict) else None
        return found if isinstance(found, str) and DIGEST.fullmatch(found) else None

    def remember(self, name: str, digest: str) -> str | None:
        """Keep a digest under name; what to say when the cache is not ours to write."""
        try:
            (self.root / TOOLKITS).mkdir(parents=True, exist_ok=True)
            _write_json(self.root / TOOLKITS / f"{name}.json", {"content": digest})
        except OSError as exc:  # another user's cache: digested again next time
            return f"compile inputs not remembered: {exc.strerror}"
        return None

    def clear(self) -> int:
        """Every entry and the counters removed (a compile under way keeps its staging
        directory); returns how many entries there were."""
        entries = self._entry_dirs()
        with self._locked():
            for entry in entries:
                self._discard(entry)
            (self.root / STATS).unlink(missing_ok=True)
        return len(entries)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: object) -> None:
    """Written beside and renamed over: a reader sees the old or the new, never half."""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    part.write_text(json.dumps(value, sort_keys=True))
    part.replace(path)
