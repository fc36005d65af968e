"""The target kernel's own modules, read from its toolkit image (the driver-toolkit installs the
kernel with its modules): which modules it ships, which it has built in, and the version (CRC) of
every symbol it exports.

The image checks resolve each module's dependencies against them; the load test puts the in-tree
modules an image needs where KMM's worker finds the node's (`/host/lib/modules/<release>`). What
is read is cached by the toolkit image's digest, so every driver of a kernel shares one copy.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from habana_tasks.core.errors import HabanaError
from habana_tasks.engine.podman import Podman

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
# Bumped when the files read from a toolkit change, so cached copies are read again.
INDEX_VERSION = "3"
KERNEL_PATHS = ("/lib/modules/{release}/vmlinuz", "/boot/vmlinuz-{release}")
# Where kernels keep their exported symbols' CRCs: RHEL's kernel-core and kernel-devel,
# Debian's linux-headers, and the build link every kernel has.
SYMVERS_PATHS = (
    "/lib/modules/{release}/symvers.gz",
    "/boot/symvers-{release}.gz",
    "/usr/src/kernels/{release}/Module.symvers",
    "/usr/src/linux-headers-{release}/Module.symvers",
    "/lib/modules/{release}/build/Module.symvers",
)
CONFIG_PATHS = (
    "/lib/modules/{release}/config",
    "/boot/config-{release}",
    "/lib/modules/{release}/build/.config",
    "/usr/src/kernels/{release}/.config",
)
VMLINUX = "vmlinux"
ALIAS_WORDS = 3  # `alias <pattern> <module>`


def module_name(path: str) -> str:
    """The name modprobe knows a module file by: no directory, no suffix, '-' read as '_'."""
    base = PurePosixPath(path).name
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class Export:
    """One exported symbol: its CRC (None without modversions) and the module exporting it."""

    crc: int | None
    owner: str


@dataclass(frozen=True)
class KernelModules:
    """What one kernel release ships: module files, built-in modules and exported symbols."""

    release: str
    # module name -> path relative to /lib/modules/<release> (from its modules.dep)
    modules: Mapping[str, str]
    builtin: frozenset[str]
    symbols: Mapping[str, Export]
    source: str  # the toolkit image it was read from
    has_index: bool = True  # False: the toolkit carries no modules.dep for this release
    has_symvers: bool = True
    config: str = ""  # the kernel's .config, when the toolkit carries it
    # module path -> the paths it depends on (modules.dep), and (alias pattern, module name)
    depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: tuple[tuple[str, str], ...] = ()


def parse_depends(text: str) -> dict[str, tuple[str, ...]]:
    """`path: dep dep ...` lines -> {path: (dep, ...)}, in the file's order."""
    lines = (line.partition(":") for line in text.splitlines())
    return {path.strip(): tuple(deps.split()) for path, sep, deps in lines if sep and path.strip()}


def modules_of(depends: Iterable[str]) -> dict[str, str]:
    """Module paths -> {name: path}; the first path of a name wins, as in modprobe."""
    modules: dict[str, str] = {}
    for path in depends:
        modules.setdefault(module_name(path), path)
    return modules


def parse_modules_dep(text: str) -> dict[str, str]:
    """`path: dep dep ...` lines -> {name: path} (see modules_of)."""
    return modules_of(parse_depends(text))


def parse_aliases(text: str) -> tuple[tuple[str, str], ...]:
    """modules.alias lines `alias <pattern> <module>` -> ((pattern, module name), ...)."""
    words = (line.split() for line in text.splitlines())
    return tuple(
        (w[1], module_name(w[2])) for w in words if len(w) == ALIAS_WORDS and w[0] == "alias"
    )


def parse_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def parse_symvers(text: str) -> dict[str, Export]:
    """Module.symvers lines: `0xCRC<TAB>symbol<TAB>module-path<TAB>EXPORT_TYPE[<TAB>namespace]`."""
    symbols: dict[str, Export] = {}
    for line in text.splitlines():
        fields = [*line.split("\t"), "", ""]
        if not fields[1] or not fields[2]:
            continue
        try:
            crc: int | None = int(fields[0], 16)
        except ValueError:
            crc = None
        owner = fields[2]
        symbols[fields[1]] = Export(crc, VMLINUX if owner == VMLINUX else module_name(owner))
    return symbols


def _key(toolkit_image: str, release: str) -> str:
    return hashlib.sha256(f"{INDEX_VERSION}\0{toolkit_image}\0{release}".encode()).hexdigest()[:24]


class KernelModuleStore:
    """Reads kernels from toolkit images once; safe to share between parallel jobs."""

    def __init__(self, podman: Podman, root: Path) -> None:
        self.podman = podman
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # What load() parsed, by folder: a build's check, configuration read and load test
        # each ask for the same kernel, whose symbol and alias tables are large.
        self._loaded: dict[Path, KernelModules] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _dir(self, toolkit_image: str, release: str) -> Path:
        return self.root / _key(toolkit_image, release)

    def _copy(self, toolkit_image: str, wanted: Mapping[str, Iterable[str]], into: Path) -> None:
        """Copy files out of the image into a fresh folder that replaces `into` when complete;
        each wanted name takes the first candidate path the image holds."""
        partial = into.with_name(f"{into.name}.partial-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            found = self.podman.copy_files_from_image(toolkit_image, wanted, partial)
            (partial / "found").write_text(
                "".join(f"{name}\t{path}\n" for name, path in sorted(found.items()))
            )
            if into.exists():
                shutil.rmtree(into)
            partial.replace(into)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def load(self, toolkit_image: str, release: str) -> KernelModules:
        """The kernel's module index and symbol versions as its toolkit image holds them."""
        directory = self._dir(toolkit_image, release) / "index"
        with self._lock(str(directory)):
            if directory not in self._loaded:
                self._loaded[directory] = self._read(directory, toolkit_image, release)
            return self._loaded[directory]

    def _read(self, directory: Path, toolkit_image: str, release: str) -> KernelModules:
        """The index files copied out of the toolkit once (kept on disk), then parsed."""
        if not (directory / "found").is_file():
            base = f"/lib/modules/{release}"
            wanted = {
                "modules.dep": [f"{base}/modules.dep"],
                "modules.builtin": [f"{base}/modules.builtin"],
                "modules.alias": [f"{base}/modules.alias"],
                "symvers": [p.format(release=release) for p in SYMVERS_PATHS],
                "config": [p.format(release=release) for p in CONFIG_PATHS],
            }
            self._copy(toolkit_image, wanted, directory)
        found = dict(line.split("\t", 1) for line in (directory / "found").read_text().splitlines())
        symvers = directory / "symvers"
        text = ""
        if symvers.is_file():
            raw = symvers.read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode(
                "utf-8", "replace"
            )
        dep = directory / "modules.dep"
        builtin = directory / "modules.builtin"
        config = directory / "config"
        depends = parse_depends(dep.read_text()) if dep.is_file() else {}
        alias = directory / "modules.alias"
        return KernelModules(
            release=release,
            modules=modules_of(depends),
            builtin=parse_builtin(builtin.read_text()) if builtin.is_file() else frozenset(),
            symbols=parse_symvers(text),
            source=toolkit_image,
            has_index="modules.dep" in found,
            has_symvers="symvers" in found,
            config=config.read_text("utf-8", "replace") if config.is_file() else "",
            depends=depends,
            aliases=parse_aliases(alias.read_text("utf-8", "replace")) if alias.is_file() else (),
        )

    def vmlinuz(self, toolkit_image: str, release: str) -> Path:
        """The kernel image itself (RHEL driver-toolkit or Debian layout)."""
        directory = self._dir(toolkit_image, release) / "kernel"
        tried = [p.format(release=release) for p in KERNEL_PATHS]
        with self._lock(str(directory)):
            if not (directory / "vmlinuz").is_file():
                self._copy(toolkit_image, {"vmlinuz": tried}, directory)
        if not (directory / "vmlinuz").is_file():
            raise HabanaError(f"{toolkit_image}: no kernel image at {' or '.join(tried)}")
        return directory / "vmlinuz"

    def files(self, toolkit_image: str, release: str, paths: Iterable[str]) -> dict[str, Path]:
        """In-tree module files (paths relative to /lib/modules/<release>) on local disk."""
        directory = self._dir(toolkit_image, release) / "files"
        wanted = sorted(set(paths))
        out: dict[str, Path] = {}
        with self._lock(str(directory)):
            missing = [p for p in wanted if not (directory / p).is_file()]
            if missing:
                fetched = directory.with_name(f"files-{uuid.uuid4().hex[:8]}")
                names = {p.replace("/", "%"): [f"/lib/modules/{release}/{p}"] for p in missing}
                self._copy(toolkit_image, names, fetched)
                for flat in (fetched / "found").read_text().splitlines():
                    name = flat.split("\t", 1)[0]
                    target = directory / name.replace("%", "/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    (fetched / name).replace(target)
                shutil.rmtree(fetched, ignore_errors=True)
        for path in wanted:
            if (directory / path).is_file():
                out[path] = directory / path
        return out
