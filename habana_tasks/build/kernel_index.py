"""What the target kernel itself ships of the image's modules, read from its toolkit image before
anything is built (through the registry, one pass over its layers, as the kernel's configuration
is read) and kept by the toolkit's digest.

A kernel that ships a module of the image's name (Debian 13's kernels ship `habanalabs`), or one
claiming the same devices (the same PCI ids in modules.alias), loads it itself on a node with the
card (udev, at boot): KMM's `modprobe` of ours then finds the name loaded and does nothing. KMM's
answer is to remove those in-tree modules first (the Module's inTreeModulesToRemove); a kernel
that builds such a module in (modules.builtin) cannot be served at all."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from habana_tasks.build.driver_package import atomic_write
from habana_tasks.build.kernel_config import per_toolkit
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import HabanaError
from habana_tasks.registry.client import RegistryClient
from habana_tasks.verification.kernel_modules import module_name, parse_aliases

# The index files of /lib/modules/<release>, where merged-/usr toolkits keep them too.
INDEX_FILES = ("modules.dep", "modules.builtin", "modules.alias")
MODULE_DIRS = ("lib/modules/{release}", "usr/lib/modules/{release}")
INDEX_VERSION = "1"  # bumped when what is read or kept changes


@dataclass(frozen=True)
class KernelIndex:
    """The kernel's module names (files and built in) and the device aliases each claims."""

    modules: frozenset[str] = frozenset()
    builtin: frozenset[str] = frozenset()
    aliases: Mapping[str, frozenset[str]] = field(default_factory=dict)
    found: bool = True  # False: the toolkit carries no modules.dep for the release

    def replaced(self, image_modules: Iterable[str]) -> tuple[str, ...]:
        """The kernel's own modules KMM must remove before loading the image's: those of the
        same names, and those claiming a device one of them claims."""
        same = {m for m in image_modules if m in self.modules}
        claimed = set().union(*(self.aliases.get(m, frozenset()) for m in same))
        rivals = {m for m, patterns in self.aliases.items() if patterns & claimed}
        return tuple(sorted((same | rivals) & self.modules))

    def built_in(self, image_modules: Iterable[str]) -> tuple[str, ...]:
        """The image's modules the kernel has built in: no removal can make room for them."""
        return tuple(sorted(m for m in image_modules if m in self.builtin))


def parse_index(dep: str, builtin: str, alias: str, found: bool = True) -> KernelIndex:
    modules = frozenset(
        module_name(line.split(":", 1)[0].strip()) for line in dep.splitlines() if ":" in line
    )
    names = frozenset(module_name(line.strip()) for line in builtin.splitlines() if line.strip())
    aliases: dict[str, set[str]] = {}
    for pattern, module in parse_aliases(alias):
        aliases.setdefault(module, set()).add(pattern)
    frozen = {name: frozenset(patterns) for name, patterns in aliases.items()}
    return KernelIndex(modules, names, frozen, found)


def kernel_index(
    registry: RegistryClient, cache: Path, toolkit: str, release: str, arch: str
) -> KernelIndex:
    """The module index of `release` in the toolkit (pinned by digest). A registry fault is
    raised (the caller decides; nothing is kept)."""
    digest = toolkit.rsplit("@", 1)[-1].removeprefix("sha256:")
    kept = cache / "kernel-index" / f"{INDEX_VERSION}-{digest}-{release}.json"
    if kept.is_file():
        data = json.loads(kept.read_text("utf-8"))
        return parse_index(data["dep"], data["builtin"], data["alias"], data["found"])
    paths = [f"{d}/{name}".format(release=release) for d in MODULE_DIRS for name in INDEX_FILES]

    def names(found: Mapping[str, bytes]) -> dict[str, bytes]:
        held: dict[str, bytes] = {}
        for path in paths:  # each file from the first directory holding it
            if path in found:
                held.setdefault(path.rsplit("/", 1)[1], found[path])
        return held

    def enough(found: Mapping[str, bytes]) -> bool:
        """Layers are read newest first until the three files are held (the toolkit's own
        layer, above the base's), not to the bottom looking for the other directory."""
        return len(names(found)) == len(INDEX_FILES)

    held = names(registry.read_each(toolkit, paths, arch, enough))
    dep, builtin, alias = (held.get(n, b"").decode("utf-8", "replace") for n in INDEX_FILES)
    data = {"dep": dep, "builtin": builtin, "alias": alias, "found": "modules.dep" in held}
    atomic_write(kept, json.dumps(data).encode())
    return parse_index(dep, builtin, alias, "modules.dep" in held)


def kernel_indexes(
    registry: RegistryClient, cache: Path, pinned: Sequence[tuple[BuildTarget, str]]
) -> dict[str, KernelIndex | HabanaError]:
    """Each target's kernel index (by tag), one read per toolkit digest and release; a read
    the registry could not answer is the error itself: the caller must not build as if the
    kernel shipped nothing."""

    def read(toolkit: str, release: str, arch: str) -> KernelIndex | HabanaError:
        try:
            return kernel_index(registry, cache, toolkit, release, arch)
        except HabanaError as exc:
            return exc

    return per_toolkit(pinned, read)
