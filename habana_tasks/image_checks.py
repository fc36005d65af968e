"""Checks on a built image before it may be published: it must be loadable by KMM for its kernel.

The image is exported (never run) and inspected with kmod's own tools: every expected module is
there, built for exactly this release (vermagic), and `modprobe -d /opt` resolves it.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from habana_tasks import archive
from habana_tasks.config import BuildTarget
from habana_tasks.errors import CheckError, CommandError
from habana_tasks.podman import Podman
from habana_tasks.process import LineSink, ProcessRunner

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
REQUIRED_TOOLS = {
    "cp": ("usr/bin/cp", "bin/cp"),
    "modprobe": ("usr/sbin/modprobe", "sbin/modprobe", "usr/bin/kmod", "bin/kmod"),
}


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
        names = frozenset(m.name.lstrip("./") for m in members)
        wanted = [m for m in members if m.name.lstrip("./").startswith("opt/")]
        archive.extract(tar, destination, wanted)
    return ImageTree(names, destination)


def find_module(tree: ImageTree, release: str, module: str) -> Path | None:
    base = tree.module_dir(release)
    for suffix in MODULE_SUFFIXES:
        for candidate in sorted(base.rglob(module + suffix)):
            return candidate
    return None


def vermagic_problem(module: str, vermagic: str, release: str) -> str | None:
    """A module whose vermagic names another release can still load (matching CRCs): refuse it."""
    if not vermagic.startswith(release + " "):
        found = vermagic.split(" ", 1)[0] or "nothing"
        return f"{module}: vermagic names kernel {found!r}, not {release!r}"
    return None


def show_depends_problem(module: str, output: str) -> str | None:
    lines = [line for line in output.splitlines() if line.strip()]
    if not any(line.startswith("insmod ") and f"/{module}.ko" in line for line in lines):
        return f"{module}: modprobe --show-depends did not resolve it ({' | '.join(lines[-2:])})"
    return None


def check_tree(
    tree: ImageTree,
    target: BuildTarget,
    runner: ProcessRunner,
    expect_firmware: bool,
    on_line: LineSink | None = None,
) -> list[str]:
    """Every problem found; an empty list means the image may be published."""
    problems = []
    release = target.kernel
    for tool, paths in REQUIRED_TOOLS.items():
        if not any(p in tree.members for p in paths):
            problems.append(f"the image has no {tool} ({' or '.join('/' + p for p in paths)})")
    moddir = tree.module_dir(release)
    dep = moddir / "modules.dep"
    if not dep.is_file() or dep.stat().st_size == 0:
        problems.append(f"/opt/lib/modules/{release}/modules.dep is missing or empty (depmod)")
    for module in target.modules:
        path = find_module(tree, release, module)
        if path is None:
            problems.append(f"{module}: no {module}.ko under /opt/lib/modules/{release}")
            continue
        try:
            vermagic = runner.run(
                ["modinfo", "-F", "vermagic", str(path)], keep_output=True, on_line=on_line
            ).text.strip()
        except CommandError as exc:
            problems.append(f"{module}: modinfo cannot read it ({exc})")
            continue
        if why := vermagic_problem(module, vermagic, release):
            problems.append(why)
        if dep.is_file():
            done = runner.run(
                ["modprobe", "-d", str(tree.root / "opt"), "-S", release, "--show-depends", module],
                keep_output=True,
                check=False,
                on_line=on_line,
            )
            if why := show_depends_problem(module, done.text):
                problems.append(why)
    if expect_firmware and not any(
        m.startswith("opt/lib/firmware/habanalabs/") for m in tree.members
    ):
        problems.append("a firmware package was given but /opt/lib/firmware/habanalabs is empty")
    return problems


def check_image(
    podman: Podman,
    image: str,
    target: BuildTarget,
    workdir: Path,
    expect_firmware: bool,
    on_line: LineSink | None = None,
) -> Path:
    """Export and check; returns the exported rootfs tar (reused by the smoke test)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs.tar"
    podman.export_rootfs(image, rootfs, on_line)
    tree = unpack(rootfs, workdir / "tree")
    problems = check_tree(tree, target, podman.runner, expect_firmware, on_line)
    if problems:
        raise CheckError("; ".join(problems))
    return rootfs
