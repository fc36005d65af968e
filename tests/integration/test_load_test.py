"""Load tests in the exact target kernel (qemu, TCG), on real images and on broken variants."""

from __future__ import annotations

import io
import lzma
import re
import struct
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from devtools.vendor_packages import EXAMPLE_MODULES, STANDIN_MODULE
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.errors import HostError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import Podman
from habana_tasks.verification import load_testing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.worker import WorkerTools
from tests.conftest import ROOT, require_tools
from tests.integration.conftest import DRIVER, KERNELS

pytestmark = pytest.mark.integration
OLD, NEW = KERNELS
Member = tuple[tarfile.TarInfo, bytes | None]


IB_CORE = "kernel/drivers/infiniband/core/ib_core.ko"


@pytest.fixture(scope="module")
def parts(
    library: tuple[Project, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Exported root filesystems of both example images, the 6.1.0-56 kernel, and the node's
    in-tree modules the 6.1.0-56 image needs (taken from its toolkit, as the load test does)."""
    _, versions = library
    cfg = versions_file.load(versions)
    podman = Podman(ProcessRunner())
    work = tmp_path_factory.mktemp("parts")
    out: dict[str, Path] = {}
    for target in cfg.targets:
        out[target.kernel] = work / f"{target.kernel}.tar"
        podman.export_rootfs(target.image, out[target.kernel])
    toolkit = cfg.targets[1].toolkit_image
    store = KernelModuleStore(podman, work / "kernels")
    out["vmlinuz"] = store.vmlinuz(toolkit, NEW)
    out["worker"] = WorkerTools(podman, ROOT / "Dockerfile", work / "kernels").tar(toolkit)
    closure = load_testing.in_tree_closure(out[NEW], NEW)
    assert IB_CORE in closure, closure
    for path, file in store.files(toolkit, NEW, closure).items():
        out[f"node:{path}"] = file
    return out


def node_of(parts: dict[str, Path]) -> dict[str, bytes]:
    return {k[len("node:") :]: v.read_bytes() for k, v in parts.items() if k.startswith("node:")}


def rewrite(
    src: Path, dst: Path, change: Callable[[tarfile.TarInfo, bytes | None], list[Member]]
) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            for info, body in change(member, data):
                if body is None:
                    tout.addfile(info)
                else:
                    info.size = len(body)
                    tout.addfile(info, io.BytesIO(body))
    return dst


def boot(
    parts: dict[str, Path],
    rootfs: Path,
    work: Path,
    timeout: float = 90,
    node: Mapping[str, bytes] | None = None,
    modules: Sequence[str] = EXAMPLE_MODULES,
) -> load_testing.LoadTestResult:
    lines: list[str] = []
    files = node_of(parts) if node is None else node
    result = load_testing.boot_and_load(
        Podman(ProcessRunner()),
        rootfs,
        parts["vmlinuz"],
        NEW,
        modules,
        work,
        load_testing.Node(parts["worker"], files, needed=tuple(sorted(files))),
        timeout=timeout,
        on_line=lines.append,
    )
    boot.console = lines  # type: ignore[attr-defined]
    return result


def test_the_example_library_passes_in_both_kernels(library: tuple[Project, Path]) -> None:
    project, versions = library
    out = io.StringIO()
    console = Console(file=out, width=250)
    assert commands.load_tests(project, str(versions), jobs=2, console=console) == 0
    text = out.getvalue()
    for kernel in KERNELS:
        assert f"{DRIVER}-{kernel}" in text and kernel in text
    assert text.count("pass") >= 2


def test_both_modules_load_with_the_nodes_in_tree_dependencies(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    result = boot(parts, parts[NEW], tmp_path)
    assert (result.passed, result.reason) == (True, "loaded")
    assert result.node_modules == ("ib_core", "ib_uverbs")
    console = "\n".join(boot.console)  # type: ignore[attr-defined]
    for module in EXAMPLE_MODULES:
        assert f"LOAD-TEST: loaded {module}" in console
    # The image's own sh, mkdir and cp copied the tree out, as KMM's image-extractor does ...
    assert f"LOAD-TEST: image-extractor copied /opt/lib/modules/{NEW}" in console
    # ... and the worker's modprobe took ib_core from the node's tree, through the host link.
    assert f"insmod /tmp/opt/lib/modules/{NEW}/host/{IB_CORE}" in console


def test_an_in_tree_dependency_absent_from_the_node_is_named(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    node = {path: data for path, data in node_of(parts).items() if path != IB_CORE}
    result = boot(parts, parts[NEW], tmp_path, node=node)
    assert (result.passed, result.reason) == (
        False,
        f"{STANDIN_MODULE} needs in-tree {IB_CORE}, absent from this node's /lib/modules/{NEW}",
    )
    assert "LOAD-TEST: loaded habanalabs" in "\n".join(boot.console)  # type: ignore[attr-defined]


def flip_export_crcs(module: bytes) -> bytes:
    """The same module with every exported symbol's CRC changed (__kcrctab*, ELF64 LE): a node
    whose ib_core was built with other symbol versions."""
    data = bytearray(module)
    shoff, shentsize, shnum, shstrndx = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HHH", data, 0x3A),
    )
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx][4]
    flipped = 0
    for name_at, _, _, _, offset, size in sections:
        name = bytes(data[names + name_at : data.index(b"\0", names + name_at)])
        if name.startswith(b"__kcrctab"):
            for at in range(offset, offset + size, 4):
                data[at] ^= 0xFF
                flipped += 1
    assert flipped, "no __kcrctab section"
    return unsigned(bytes(data))


SIGNATURE_MAGIC = b"~Module signature appended~\n"


def unsigned(module: bytes) -> bytes:
    """The module without its appended signature: a changed module keeps no valid signature
    (a present but wrong one is refused even without enforcement, EKEYREJECTED)."""
    assert module.endswith(SIGNATURE_MAGIC)
    # ... signature, struct module_signature (12 bytes, big-endian sig_len last), magic
    info_end = len(module) - len(SIGNATURE_MAGIC)
    (sig_len,) = struct.unpack(">I", module[info_end - 4 : info_end])
    return module[: info_end - 12 - sig_len]


def test_a_node_dependency_with_other_symbol_versions_is_refused(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    node = node_of(parts)
    node[IB_CORE] = flip_export_crcs(node[IB_CORE])
    result = boot(parts, parts[NEW], tmp_path, node=node)
    assert not result.passed
    assert result.reason.startswith(f"modprobe -d /tmp/opt {STANDIN_MODULE} failed: ")
    # Every ib_core CRC differs, so the first module loaded against it (ib_uverbs, before the
    # stand-in itself) is refused; the kernel's line is the reason.
    assert re.search(
        r"\(kernel: (ib_uverbs|habana_example_ib): disagrees about version of symbol \w+\)$",
        result.reason,
    ), result.reason


def test_a_listed_module_the_package_does_not_build_fails_by_name(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    result = boot(parts, parts[NEW], tmp_path, modules=[*EXAMPLE_MODULES, "habanalabs_ib"])
    assert not result.passed
    assert result.reason == (
        "modprobe -d /tmp/opt habanalabs_ib failed: modprobe: FATAL: Module habanalabs_ib "
        f"not found in directory /tmp/opt/lib/modules/{NEW}"
    )


def test_module_for_another_abi_loads_but_vermagic_catches_it(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    def relabel(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        info.name = info.name.replace(f"lib/modules/{OLD}", f"lib/modules/{NEW}")
        return [(info, data)]

    rootfs = rewrite(parts[OLD], tmp_path / "r.tar", relabel)
    result = boot(parts, rootfs, tmp_path)
    assert not result.passed
    assert (
        result.reason
        == f"vermagic of habanalabs is '{OLD} SMP preempt mod_unload modversions ', booted {NEW}"
    )
    # It really loaded: only the vermagic comparison stands between it and a node.
    assert "LOAD-TEST: loaded habanalabs" in "\n".join(boot.console)  # type: ignore[attr-defined]


def patch_module(parts: dict[str, Path], tmp_path: Path, patch: Callable[[bytes], bytes]) -> Path:
    def change(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        if info.name.endswith("/habanalabs.ko") and data is not None:
            return [(info, patch(data))]
        return [(info, data)]

    return rewrite(parts[NEW], tmp_path / "r.tar", change)


def test_altered_vermagic_is_refused_by_the_kernel(parts: dict[str, Path], tmp_path: Path) -> None:
    rootfs = patch_module(parts, tmp_path, lambda d: d.replace(b"mod_unload ", b"mod_unlaod ", 1))
    result = boot(parts, rootfs, tmp_path)
    assert result.reason.startswith("modprobe -d /tmp/opt habanalabs failed: "), result.reason
    assert "(kernel: habanalabs: version magic '6.1.0-56-amd64 SMP preempt mod_unlaod" in (
        result.reason
    )
    assert any("version magic" in line for line in result.evidence), result.evidence


def test_corrupted_symbol_crc_is_refused_by_the_kernel(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    def corrupt(data: bytes) -> bytes:
        # __versions holds {u64 crc; char name[56]}: flip the CRC in front of module_layout.
        at = data.index(b"module_layout\0") - 8
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    result = boot(parts, patch_module(parts, tmp_path, corrupt), tmp_path)
    assert not result.passed
    assert result.reason.endswith(
        "(kernel: habanalabs: disagrees about version of symbol module_layout)"
    ), result.reason
    assert any("disagrees about version of symbol module_layout" in e for e in result.evidence)


def test_image_without_modules_dep_fails(parts: dict[str, Path], tmp_path: Path) -> None:
    def drop(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        return [] if "/modules.dep" in info.name else [(info, data)]

    result = boot(parts, rewrite(parts[NEW], tmp_path / "r.tar", drop), tmp_path)
    assert not result.passed
    assert result.reason.startswith("modprobe -d /tmp/opt habanalabs failed: modprobe: "), (
        result.reason
    )


def test_an_image_whose_cp_cannot_run_fails_with_the_shells_own_reason(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    """KMM's image-extractor runs the image's own cp: without the library cp loads, nothing is
    copied out and nothing can load."""

    def drop(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        return [] if info.name.endswith("/libacl.so.1") else [(info, data)]

    result = boot(parts, rewrite(parts[NEW], tmp_path / "r.tar", drop), tmp_path)
    assert not result.passed
    assert result.reason.startswith(
        "the image's own /bin/sh, mkdir and cp (KMM's image-extractor) did not copy its modules "
        "out: "
    ), result.reason
    assert "libacl.so.1: cannot open shared object file" in result.reason, result.reason


def test_default_xz_module_is_accepted_because_kmod_decompresses_in_userspace(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    """Debian 12's kmod 30 decompresses .ko.xz itself and calls init_module with the plain ELF,
    so the kernel's xz decoder (CRC32, <= 1 MiB dictionary only) is never involved. kmod >= 31
    with kernel >= 6.4 hands compressed modules to the kernel: there, default xz settings fail."""
    require_tools("depmod")
    tree = tmp_path / "tree"
    moddir = tree / "opt" / "lib" / "modules" / NEW
    (moddir / "extra").mkdir(parents=True)
    with tarfile.open(parts[NEW]) as tar:
        plain = tar.extractfile(f"opt/lib/modules/{NEW}/extra/habanalabs.ko").read()  # type: ignore[union-attr]
    compressed = lzma.compress(plain)  # the defaults: CRC64, preset 6 (8 MiB dictionary)
    assert compressed[6:8] == b"\x00\x04"  # stream flags: CRC64
    (moddir / "extra" / "habanalabs.ko.xz").write_bytes(compressed)
    (moddir / "modules.order").write_text("extra/habanalabs.ko.xz\n")
    (moddir / "modules.builtin").write_text("")
    ProcessRunner().run(["depmod", "-b", str(tree / "opt"), NEW])  # found in /sbin for any user
    regenerated = {
        f"opt/lib/modules/{NEW}/{p.name}": p.read_bytes() for p in moddir.iterdir() if p.is_file()
    }

    def swap(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        if info.name.startswith(f"opt/lib/modules/{NEW}/") and info.isfile():
            if info.name.endswith("habanalabs.ko"):
                info.name += ".xz"
                return [(info, compressed)]
            return [(info, regenerated.pop(info.name))] if info.name in regenerated else []
        return [(info, data)]

    rootfs = rewrite(parts[NEW], tmp_path / "r.tar", swap)
    result = boot(parts, rootfs, tmp_path, node={}, modules=["habanalabs"])
    assert (result.passed, result.reason) == (True, "loaded")
    assert any("habanalabs.ko.xz" in line for line in boot.console)  # type: ignore[attr-defined]


def test_a_guest_that_never_reaches_init_is_the_hosts_fault(
    parts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stock kernel that does not reach /init in time, or a qemu that cannot start (KVM asked
    for where it does not work), says nothing about the image: the host's failure, never a
    verdict on the image that the failure memory could keep."""
    with pytest.raises(HostError, match=r"did not reach /init within 1 s \(qemu killed\)"):
        boot(parts, parts[NEW], tmp_path / "slow", timeout=1)
    monkeypatch.setenv("HABANA_QEMU_ACCEL", "no-such-accelerator")
    with pytest.raises(HostError, match=r"^qemu could not run: exit 1: .*no-such-accelerator"):
        boot(parts, parts[NEW], tmp_path / "no-qemu")


def test_hanging_guest_is_killed_and_reported(parts: dict[str, Path], tmp_path: Path) -> None:
    def hang(info: tarfile.TarInfo, data: bytes | None) -> list[Member]:
        """The image's cp never returns: KMM's image-extractor hangs, and so does the guest."""
        if info.name == "usr/bin/cp":
            return [(info, b"#!/bin/sh\nwhile :; do :; done\n")]
        return [(info, data)]

    rootfs = rewrite(parts[NEW], tmp_path / "r.tar", hang)
    result = boot(parts, rootfs, tmp_path, timeout=15)
    assert (result.passed, result.reason) == (False, "guest timed out after 15 s (qemu killed)")
    left = subprocess.run(
        ["pgrep", "-f", f"qemu-system-x86_64.*{tmp_path}"], capture_output=True, check=False
    )
    assert left.returncode == 1, left.stdout
