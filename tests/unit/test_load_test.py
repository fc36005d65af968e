from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from habana_tasks.verification.guest_init import init_script
from habana_tasks.verification.initramfs import rootfs_to_cpio
from habana_tasks.verification.load_testing import qemu_argv
from habana_tasks.verification.verdict import evaluate
from tests.conftest import require_tools

R = "6.1.0-56-amd64"
PASSING = [
    "[    1.2] Run /init as init process\r",
    f"LOAD-TEST: booted {R}\r",
    "LOAD-TEST: modprobe habanalabs ok",
    "LOAD-TEST: loaded habanalabs",
    "LOAD-TEST: vermagic habanalabs ok",
    "LOAD-TEST: pci driver habanalabs registered",
    "LOAD-TEST: dmesg [ 4.9] habanalabs: module verification failed: signature and/or required key",
    "LOAD-TEST: PASS",
]


def test_a_clean_load_passes() -> None:
    assert evaluate(PASSING, R) == (True, "loaded", ())


def test_another_booted_kernel_fails() -> None:
    lines = [line.replace(R, "6.1.0-55-amd64") for line in PASSING]
    assert evaluate(lines, R)[:2] == (False, f"booted kernel '6.1.0-55-amd64', expected '{R}'")


def test_first_fail_mark_is_the_reason_and_kernel_errors_are_evidence() -> None:
    lines = [
        f"LOAD-TEST: booted {R}",
        "[ 5.0] habanalabs: disagrees about version of symbol module_layout",
        "LOAD-TEST: FAIL modprobe -d /opt habanalabs failed",
        "LOAD-TEST: FAIL pci driver habanalabs not registered",
        "LOAD-TEST: FAIL",
    ]
    passed, reason, evidence = evaluate(lines, R)
    # modprobe's own words say little ("Invalid argument"): the kernel's line is the reason.
    assert (passed, reason) == (
        False,
        "modprobe -d /opt habanalabs failed "
        "(kernel: habanalabs: disagrees about version of symbol module_layout)",
    )
    assert evidence[0] == "[ 5.0] habanalabs: disagrees about version of symbol module_layout"


def test_a_dependency_absent_from_the_node_is_its_own_reason() -> None:
    lines = [
        f"LOAD-TEST: booted {R}",
        "LOAD-TEST: FAIL habana_example_ib needs in-tree kernel/drivers/infiniband/core/ib_core.ko,"
        f" absent from this node's /lib/modules/{R}",
        "LOAD-TEST: FAIL",
    ]
    assert evaluate(lines, R)[1] == (
        "habana_example_ib needs in-tree kernel/drivers/infiniband/core/ib_core.ko, "
        f"absent from this node's /lib/modules/{R}"
    )


def test_kernel_error_alone_fails_even_with_a_pass_mark() -> None:
    lines = [
        *PASSING[:-1],
        "LOAD-TEST: dmesg [ 5] habanalabs: Unknown symbol foo (err -2)",
        "LOAD-TEST: PASS",
    ]
    passed, reason, _ = evaluate(lines, R)
    assert not passed and reason.startswith(
        "kernel log: LOAD-TEST: dmesg [ 5] habanalabs: Unknown symbol"
    )


def test_guest_that_never_reaches_init_shows_the_console_tail() -> None:
    lines = [
        "[ 0.1] Linux version 6.1",
        "[ 0.9] Kernel panic - not syncing: VFS: Unable to mount root",
    ]
    passed, reason, evidence = evaluate(lines, R)
    assert (passed, reason) == (False, "the guest never reached /init (see console tail)")
    assert evidence[-1].endswith("Unable to mount root")


def test_guest_without_verdict_fails() -> None:
    assert evaluate(PASSING[:-1], R)[:2] == (False, "the guest stopped before its verdict")


def test_qemu_uses_tcg_unless_asked_and_never_reboots() -> None:
    argv = qemu_argv(Path("/k"), Path("/i"))
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    assert "-no-reboot" in argv and argv[-1] == "console=ttyS0 panic=-1 quiet"
    assert qemu_argv(Path("/k"), Path("/i"), accel="kvm")[2] == "kvm"


def test_init_loads_every_module_in_order_from_the_extracted_copy() -> None:
    script = init_script(
        ["habanalabs", "habanalabs_cn", "habanalabs_en"], "6.1.0-56-amd64"
    ).decode()
    assert "for m in habanalabs habanalabs_cn habanalabs_en; do" in script
    assert 'modprobe -v -d "$dir" "$m"' in script and "dir=/tmp/opt" in script
    assert "/sys/bus/pci/drivers/habanalabs " in script


def test_init_runs_kmms_image_extractor_command_in_the_image_as_its_user() -> None:
    """The image's own /bin/sh runs exactly what KMM's init container runs (workerpodmanager.go's
    addCopyCommand): mkdir -p and cp -R of the release's tree, then of firmwarePath's contents."""
    release = "6.1.0-56-amd64"
    plain = init_script(["habanalabs"], release).decode()
    assert (
        "chroot --userspec=1001:0 /image /bin/sh -c '\nmkdir -p /tmp/opt/lib/modules;\n"
        f"cp -R /opt/lib/modules/{release} /tmp/opt/lib/modules;\n'"
    ) in plain
    assert "firmware" not in plain.split("chroot", 1)[1].split("'", 2)[1]
    with_firmware = init_script(["habanalabs"], release, firmware=True).decode()
    assert (
        "\nmkdir -p /tmp/opt/lib/firmware;\ncp -R /opt/lib/firmware/* /tmp/opt/lib/firmware;\n'"
    ) in with_firmware
    # The shared folder is the same in both: the image's /tmp is the node's /tmp.
    assert "mount --bind /tmp /image/tmp" in plain


def extract(cpio: Path, into: Path) -> Path:
    """The archive unpacked by the real cpio (its device node left out: no root needed)."""
    into.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        stdin=cpio.open("rb"),
        cwd=into,
        check=True,
    )
    return into


def test_initramfs_is_a_faithful_newc_archive(tmp_path: Path) -> None:
    require_tools("cpio")
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        for name, data, mode in [
            ("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
            ("etc/a", b"x" * 5, 0o644),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin")
        link.type, link.linkname = tarfile.SYMTYPE, "usr/bin"
        tar.addfile(link)
        hard = tarfile.TarInfo("etc/b")
        hard.type, hard.linkname = tarfile.LNKTYPE, "etc/a"
        tar.addfile(hard)
    out = tmp_path / "initrd.cpio"
    size = rootfs_to_cpio([(rootfs, "")], out, {"init": (0o755, b"#!/bin/sh\n")})
    assert size == out.stat().st_size
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"],
        stdin=out.open("rb"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "crw-------" in listing and "dev/console" in listing
    assert "bin -> usr/bin" in listing
    extracted = extract(out, tmp_path / "x")
    assert (extracted / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (extracted / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (extracted / "etc/b").read_bytes() == b"xxxxx"
    assert (extracted / "init").stat().st_mode & 0o777 == 0o755


def test_a_second_root_filesystem_sits_under_its_prefix_and_the_first_wins(
    tmp_path: Path,
) -> None:
    require_tools("cpio")
    trees = []
    for name, body in (("worker", b"worker's"), ("image", b"image's")):
        trees.append(tmp_path / f"{name}.tar")
        with tarfile.open(trees[-1], "w") as tar:
            for path in ("usr/bin/sh", f"only-{name}"):
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(body), 0o755
                tar.addfile(info, io.BytesIO(body))
    out = tmp_path / "initrd.cpio"
    rootfs_to_cpio([(trees[0], ""), (trees[1], "image"), (trees[1], "")], out, {})
    extracted = extract(out, tmp_path / "x")
    assert (extracted / "usr/bin/sh").read_bytes() == b"worker's"
    assert (extracted / "image/usr/bin/sh").read_bytes() == b"image's"
    assert (extracted / "image/only-image").is_file() and (extracted / "only-image").is_file()
    assert (extracted / "tmp").stat().st_mode & 0o7777 == 0o1777
