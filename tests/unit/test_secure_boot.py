"""The Secure Boot node's parts, its enrolled variables and the verdict on its console; the boot
itself runs in tests/integration/test_signing.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from habana_tasks.core.errors import HabanaError
from habana_tasks.verification import secure_boot
from habana_tasks.verification.console import MARK
from habana_tasks.verification.verdict import evaluate
from tests.conftest import ROOT, require
from tests.keys import make_pair

RELEASE = "6.1.0-56-amd64"
GOOD = [
    f"{MARK} booted {RELEASE}",
    f"{MARK} lockdown none [integrity] confidentiality",
    f"{MARK} boot [    0.000000] secureboot: Secure boot enabled",
    f"{MARK} boot [    0.000000] Kernel is locked down from EFI Secure Boot",
    f"{MARK} PASS",
]


def test_a_missing_part_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(HabanaError) as info:
        secure_boot.find_parts(tmp_path, system_root=tmp_path)
    message = str(info.value)
    for package in ("ovmf", "shim-signed", "grub-efi-amd64-signed"):
        assert f"package {package})" in message
    assert "/usr/lib/shim/shimx64.efi.signed" in message
    assert "scripts/install-deps" in (info.value.hint or "")


def test_parts_unpacked_by_install_deps_are_found(tmp_path: Path) -> None:
    for part in secure_boot.PARTS.values():
        where = tmp_path / secure_boot.UNPACKED / part.path
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(part.package.encode())
    parts = secure_boot.find_parts(tmp_path, system_root=tmp_path / "empty")
    assert parts.shim.read_bytes() == b"shim-signed" and parts.code.read_bytes() == b"ovmf"


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("secureboot:", "the guest did not report Secure Boot enabled (lockdown none [integrity]"),
        ("lockdown", "the guest did not report Secure Boot enabled"),
    ],
)
def test_a_boot_without_secure_boot_or_lockdown_fails_whatever_loaded(
    drop: str, expected: str
) -> None:
    lines = [line for line in GOOD if drop not in line or "locked down" in line]
    if drop == "lockdown":  # Secure Boot on, kernel not locked down
        lines = [*lines[:1], f"{MARK} lockdown [none] integrity confidentiality", *lines[1:]]
        expected = "Secure Boot is on but the kernel is not locked down (lockdown [none]"
    passed, reason, _ = evaluate(lines, RELEASE, secure_boot=True)
    assert not passed and reason.startswith(expected), reason
    assert evaluate(GOOD, RELEASE, secure_boot=True)[:2] == (True, "loaded")
    assert evaluate(lines, RELEASE)[:2] == (True, "loaded")  # a plain boot does not ask


def test_lockdowns_refusal_is_the_kernels_reason() -> None:
    lines = [
        *GOOD[:-1],
        f"{MARK} modprobe: modprobe: ERROR: could not insert 'habanalabs': Operation not permitted",
        f"{MARK} FAIL modprobe -d /tmp/opt habanalabs failed: modprobe: ERROR: could not "
        "insert 'habanalabs': Operation not permitted",
        f"{MARK} dmesg [    3.1] Lockdown: modprobe: unsigned module loading is restricted; "
        "see man kernel_lockdown.7",
        f"{MARK} FAIL",
    ]
    passed, reason, _ = evaluate(lines, RELEASE, secure_boot=True)
    assert not passed and reason.startswith("habanalabs refused: the module is unsigned")
    assert reason.endswith(
        "(kernel: Lockdown: modprobe: unsigned module loading is restricted; "
        "see man kernel_lockdown.7)"
    ), reason


def test_the_certificate_is_enrolled_in_shims_mok_list_once_per_content(tmp_path: Path) -> None:
    try:
        parts = secure_boot.find_parts(ROOT)
    except HabanaError as exc:
        require(False, f"the boot parts scripts/install-deps provides ({exc})")
        raise
    pair = make_pair(tmp_path / "key", "habana library signing key")
    certificate = pair.certificate.read_bytes()
    made = secure_boot.enrolled_variables(parts, certificate, tmp_path / "cache")
    again = secure_boot.enrolled_variables(parts, certificate, tmp_path / "cache")
    assert made == again and made.stat().st_mtime_ns == again.stat().st_mtime_ns
    none = secure_boot.enrolled_variables(parts, None, tmp_path / "cache")
    assert none != made
    from virt.firmware.varstore import edk2  # noqa: PLC0415

    listed = edk2.Edk2VarStore(str(made)).get_varlist()
    assert "MokList" in listed and "MokList" not in edk2.Edk2VarStore(str(none)).get_varlist()
    assert certificate in bytes(listed["MokList"].data)  # the DER certificate, as enrolled


def test_the_boot_disk_and_machine(tmp_path: Path) -> None:
    parts = secure_boot.BootParts(*(tmp_path / n for n in ("code", "vars", "shim", "grub")))
    for path in (parts.shim, parts.grub, tmp_path / "vmlinuz", tmp_path / "initrd"):
        path.write_bytes(path.name.encode())
    esp = secure_boot.boot_disk(parts, tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd", "q")
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"shim"
    assert (esp / "EFI/BOOT/grubx64.efi").read_bytes() == b"grub"
    assert "linux /vmlinuz q\ninitrd /initrd.cpio\n" in (esp / "EFI/BOOT/grub.cfg").read_text()
    argv = secure_boot.qemu_argv(parts, tmp_path / "v.fd", esp, 1024, "tcg")
    assert "q35,smm=on" in argv and f"file=fat:{esp},format=raw,if=virtio,readonly=on" in argv
    with pytest.raises(HabanaError, match="comma"):
        secure_boot.qemu_argv(parts, tmp_path / "a,b", esp, 1024, "tcg")
