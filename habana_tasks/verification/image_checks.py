"""Checks on a built image before it may be published: it must be loadable by KMM for its kernel.

The image is exported (never run) and inspected with kmod's own tools: its flavour's tools resolve
inside it (image_tools), every listed module is there and nothing built is left unlisted, each
is built for exactly this release (vermagic),
`modprobe -d /opt` resolves it to the image's own file, every dependency resolves inside the image
or to a module the target kernel ships (with the same symbol versions), every firmware file a
module declares is shipped, and, when the library signs, every module's signature verifies.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from habana_tasks.config.fields import names_shown
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core import archive
from habana_tasks.core.errors import CheckError, CommandError
from habana_tasks.core.process import LineSink, ProcessRunner
from habana_tasks.engine.podman import Podman
from habana_tasks.verification import image_tools
from habana_tasks.verification.kernel_modules import (
    MODULE_SUFFIXES,
    VMLINUX,
    KernelModules,
    module_name,
)
from habana_tasks.verification.signing import Signer, accepted_hashes, signature_problems

# The link KMM's convention puts in the image; what it points to is the node's, not ours.
HOST_LINK = "host"
FIRMWARE_SUFFIXES = ("", ".xz", ".zst")


@dataclass(frozen=True)
class ImageTree:
    """What the checks need from an exported image: its file list and its /opt on disk."""

    members: frozenset[str]
    root: Path

    def module_dir(self, release: str) -> Path:
        return self.root / "opt" / "lib" / "modules" / release


def unpack(rootfs_tar: Path, destination: Path) -> ImageTree:
    """Extract only /opt (the driver payload); remember every path for the tool checks."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    with tarfile.open(rootfs_tar) as tar:
        members = tar.getmembers()
        names = frozenset(archive.relative_name(m.name) for m in members)
        wanted = [m for m in members if archive.relative_name(m.name).startswith("opt/")]
        archive.extract(tar, destination, wanted)
    return ImageTree(names, destination)


def image_modules(tree: ImageTree, release: str) -> dict[str, Path]:
    """Every module file the image itself carries (the `host` link is the node's, not ours)."""
    found: dict[str, Path] = {}
    base = tree.module_dir(release)
    for directory, subdirs, files in os.walk(base):
        if Path(directory) == base and HOST_LINK in subdirs:
            subdirs.remove(HOST_LINK)
        subdirs.sort()
        for file in sorted(files):
            if file.endswith(MODULE_SUFFIXES):
                found.setdefault(module_name(file), Path(directory) / file)
    return found


@dataclass(frozen=True)
class ModuleFacts:
    """What kmod's tools say about one module file of the image."""

    name: str
    vermagic: str
    depends: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()
    # (symbol, CRC) for every symbol it imports (its __versions), and the symbols it exports.
    imports: tuple[tuple[str, int], ...] = ()
    exports: frozenset[str] = frozenset()


def parse_modinfo(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and " " not in key:
            fields.setdefault(key, []).append(value.strip())
    return fields


def parse_versions(text: str) -> list[tuple[str, int]]:
    """`modprobe --dump-modversions` / `--show-exports`: `0xCRC<TAB>symbol` lines."""
    pairs = []
    for line in text.splitlines():
        crc, sep, symbol = line.partition("\t")
        if sep and symbol.strip():
            try:
                pairs.append((symbol.strip(), int(crc, 16)))
            except ValueError:
                continue
    return pairs


def read_module(
    runner: ProcessRunner, name: str, path: Path, on_line: LineSink | None = None
) -> ModuleFacts:
    info = parse_modinfo(runner.run(["modinfo", str(path)], keep_output=True, on_line=on_line).text)
    depends = tuple(d for v in info.get("depends", []) for d in v.split(",") if d)
    versions = runner.run(
        ["modprobe", "--dump-modversions", str(path)], keep_output=True, check=False
    )
    exports = runner.run(["modprobe", "--show-exports", str(path)], keep_output=True, check=False)
    return ModuleFacts(
        name=name,
        vermagic=(info.get("vermagic") or [""])[0],
        depends=tuple(module_name(d) for d in depends),
        firmware=tuple(info.get("firmware", [])),
        imports=tuple(parse_versions(versions.text)) if versions.returncode == 0 else (),
        exports=frozenset(s for s, _ in parse_versions(exports.text)),
    )


def dependency_problems(modules: Sequence[ModuleFacts], kernel: KernelModules) -> list[str]:
    """Each module's dependencies and imported symbols resolve inside the image or to a module
    the target kernel ships, with the same symbol CRCs; pure, so every case is unit-tested."""
    problems = []
    release = kernel.release
    ours = {m.name for m in modules}
    exported = {symbol for m in modules for symbol in m.exports}
    for module in modules:
        for dep in module.depends:
            if dep in ours or dep in kernel.modules:
                continue
            if dep in kernel.builtin:
                why = f"which {release} has built in, not as a module"
            elif not kernel.has_index:
                why = f"but {kernel.source} has no /lib/modules/{release}/modules.dep to find it in"
            else:
                why = f"which is neither in the image nor a module of {release}"
            problems.append(f"{module.name}: depends on {dep}, {why}")
        external = [(s, crc) for s, crc in module.imports if s not in exported]
        if external and not kernel.has_symvers:
            problems.append(
                f"{module.name}: cannot check its symbol versions: {kernel.source} has no "
                f"Module.symvers (or symvers.gz) for {release}"
            )
            continue
        unknown = [s for s, _ in external if s not in kernel.symbols]
        if unknown:
            problems.append(
                f"{module.name}: needs {names_shown(unknown)}, exported by neither the image nor "
                f"{release}"
            )
        differ = [
            (s, crc, kernel.symbols[s])
            for s, crc in external
            if s in kernel.symbols and kernel.symbols[s].crc not in (None, crc)
        ]
        if differ:
            symbol, crc, export = differ[0]
            owner = "the kernel" if export.owner == VMLINUX else export.owner
            symbols = names_shown([d[0] for d in differ])
            problems.append(
                f"{module.name}: disagrees about the version of {symbols} "
                f"(e.g. {symbol}: 0x{crc:08x} here, 0x{export.crc or 0:08x} in {release}'s "
                f"{owner})"
            )
    return problems


def listing_problems(listed: Sequence[str], built: Sequence[str], release: str) -> list[str]:
    """Every listed module is in the image, and nothing the package built is silently dropped."""
    problems = [
        f"{m}: no {m}.ko under /opt/lib/modules/{release} (listed in modules)"
        for m in listed
        if m not in built
    ]
    extra = sorted(set(built) - set(listed))
    if extra:
        built = names_shown([e + ".ko" for e in extra])
        problems.append(
            f"the package also built {built}, which modules does not "
            "list: KMM would never load it (add it to modules, in load order)"
        )
    return problems


def firmware_problems(
    modules: Sequence[ModuleFacts], members: frozenset[str], expect_firmware: bool
) -> list[str]:
    """With a firmware package, every firmware file a module declares must be in the image."""
    if not expect_firmware:
        return []
    if not any(m.startswith("opt/lib/firmware/") and m != "opt/lib/firmware/" for m in members):
        return ["a firmware package was given but /opt/lib/firmware is empty"]
    problems = []
    for module in modules:
        missing = [
            name
            for name in module.firmware
            if not any(
                f"opt/lib/firmware/{name}{suffix}" in members for suffix in FIRMWARE_SUFFIXES
            )
        ]
        if missing:
            files = names_shown(missing)
            problems.append(
                f"{module.name}: declares firmware {files}, not under /opt/lib/firmware"
            )
    return problems


def vermagic_problem(module: str, vermagic: str, release: str) -> str | None:
    """A module whose vermagic names another release can still load (matching CRCs): refuse it."""
    if not vermagic.startswith(release + " ") and vermagic != release:
        found = vermagic.split(" ", 1)[0] or "nothing"
        return f"{module}: vermagic names kernel {found!r}, not {release!r}"
    return None


def show_depends_problem(module: str, output: str) -> str | None:
    """modprobe must resolve the name to the image's own file, not to an in-tree namesake."""
    lines = [line for line in output.splitlines() if line.strip()]
    paths = [line.split()[1] for line in lines if line.startswith("insmod ") and " " in line]
    own = [p for p in paths if module_name(p) == module]
    if not own:
        return f"{module}: modprobe --show-depends did not resolve it ({' | '.join(lines[-2:])})"
    _, host, in_tree = own[-1].partition(f"/{HOST_LINK}/")
    if host:
        return f"{module}: modprobe resolves it to the kernel's own {in_tree}, not the image's"
    return None


def check_tree(
    tree: ImageTree,
    target: BuildTarget,
    runner: ProcessRunner,
    kernel: KernelModules,
    expect_firmware: bool,
    on_line: LineSink | None = None,
    signer: Signer | None = None,
) -> list[str]:
    """Every problem found; an empty list means the image may be published."""
    problems = []
    release = target.kernel
    moddir = tree.module_dir(release)
    dep = moddir / "modules.dep"
    if not dep.is_file() or dep.stat().st_size == 0:
        problems.append(f"/opt/lib/modules/{release}/modules.dep is missing or empty (depmod)")
    files = image_modules(tree, release)
    problems += listing_problems(target.modules, list(files), release)
    facts = []
    for name, path in files.items():
        try:
            module = read_module(runner, name, path, on_line)
        except CommandError as exc:
            problems.append(f"{name}: modinfo cannot read it ({exc})")
            continue
        facts.append(module)
        if why := vermagic_problem(name, module.vermagic, release):
            problems.append(why)
        if signer is not None:
            hashes = accepted_hashes(kernel.config) if kernel.config else None
            problems += signature_problems(runner, name, path, signer, release, hashes)
        if dep.is_file() and name in target.modules:
            done = runner.run(
                ["modprobe", "-d", str(tree.root / "opt"), "-S", release, "--show-depends", name],
                keep_output=True,
                check=False,
                on_line=on_line,
            )
            if why := show_depends_problem(name, done.text):
                problems.append(why)
    problems += dependency_problems(facts, kernel)
    problems += firmware_problems(facts, tree.members, expect_firmware)
    return problems


def check_image(
    podman: Podman,
    image: str,
    target: BuildTarget,
    kernel: KernelModules,
    workdir: Path,
    expect_firmware: bool,
    on_line: LineSink | None = None,
    *,
    signer: Signer | None = None,
) -> Path:
    """Export and check; returns the exported rootfs tar (reused by the load test)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs.tar"
    podman.export_rootfs(image, rootfs, on_line)
    with tarfile.open(rootfs) as tar:
        problems = image_tools.flavour_problems(tar, target.flavour, target.base_image is not None)
    tree = unpack(rootfs, workdir / "tree")
    problems += check_tree(tree, target, podman.runner, kernel, expect_firmware, on_line, signer)
    if problems:
        raise CheckError("; ".join(problems))
    return rootfs
