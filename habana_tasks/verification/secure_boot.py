"""The boot chain of a Secure Boot node, for the load test: UEFI firmware with Secure Boot on and
Microsoft's keys enrolled (OVMF), shim (signed by Microsoft, carrying the distribution's CA), the
distribution's signed GRUB, the target kernel as its distribution signed it; and a copy of the
firmware's variables in which the library's signing certificate is a machine-owner key (shim's
MokList), as `mokutil --import` and MokManager leave it on a real node. shim hands the MOK list
to the kernel (MokListRT), which puts it in its .machine keyring, trusted for modules.

Every part comes from its distribution package; nothing is committed. The variables are made
once per certificate and firmware (cached by their content) and copied for each boot.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from habana_tasks.core.errors import HabanaError
from habana_tasks.verification.qemu import console_machine

SHIM_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"  # shim's vendor GUID: MokList's owner
# The two boots a load test can prove an image with (the load-tested label's values).
PLAIN = "plain"
SECURE_BOOT = "secure-boot"
ESP = "esp"  # the EFI system partition's folder in a boot's work folder
# Where install-deps unpacks the bootloader packages it does not install (see find_parts).
UNPACKED = Path(".cache") / "boot-parts"


@dataclass(frozen=True)
class Part:
    what: str
    path: str  # as the package installs it
    package: str


PARTS = {
    "code": Part(
        "UEFI firmware with Secure Boot", "usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"
    ),
    "variables": Part(
        "UEFI variables with Microsoft's keys", "usr/share/OVMF/OVMF_VARS_4M.ms.fd", "ovmf"
    ),
    "shim": Part("shim signed by Microsoft", "usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    "grub": Part(
        "GRUB signed by Debian",
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "grub-efi-amd64-signed",
    ),
}


@dataclass(frozen=True)
class BootParts:
    code: Path
    variables: Path
    shim: Path
    grub: Path


def find_parts(project_root: Path, system_root: Path = Path("/")) -> BootParts:
    """Each part where its package installs it, else where scripts/install-deps unpacked it
    (shim-signed and grub-efi-amd64-signed are unpacked, not installed: their maintainer
    scripts run grub-install on an EFI host). A missing part names its package."""
    found: dict[str, Path] = {}
    missing = []
    for name, part in PARTS.items():
        candidates = (system_root / part.path, project_root / UNPACKED / part.path)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            missing.append(f"{part.what} (/{part.path}, package {part.package})")
        else:
            found[name] = path
    if missing:
        raise HabanaError(
            "the Secure Boot load test lacks " + "; ".join(missing),
            hint="scripts/install-deps installs ovmf and unpacks shim-signed and "
            "grub-efi-amd64-signed under .cache/boot-parts",
        )
    return BootParts(**found)


def enrolled_variables(parts: BootParts, certificate: bytes | None, cache: Path) -> Path:
    """The firmware's variables with `certificate` (PEM or DER) in shim's MokList, made once
    per (variables, certificate) and kept under cache; None enrolls nothing (a node that never
    imported the library's key)."""
    template = parts.variables.read_bytes()
    digest = hashlib.sha256(template + b"\0" + (certificate or b"")).hexdigest()[:24]
    kept = cache / "secure-boot" / digest / "OVMF_VARS.fd"
    if kept.is_file():
        return kept
    kept.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kept.parent) as scratch:
        made = Path(scratch) / "OVMF_VARS.fd"
        _write_variables(parts.variables, made, certificate, Path(scratch))
        made.replace(kept)
    return kept


def _write_variables(template: Path, out: Path, certificate: bytes | None, scratch: Path) -> None:
    from virt.firmware.varstore import edk2  # noqa: PLC0415  (only a Secure Boot test needs it)

    store = edk2.Edk2VarStore(str(template))
    variables = store.get_varlist()
    if certificate is not None:
        cert = scratch / "certificate"
        cert.write_bytes(certificate)
        variables.add_cert("MokList", SHIM_GUID, str(cert))
    store.write_varstore(str(out), variables)


GRUB_CFG = """set timeout=0
linux /vmlinuz {cmdline}
initrd /initrd.cpio
boot
"""


def boot_disk(parts: BootParts, work: Path, kernel: Path, initrd: Path, cmdline: str) -> Path:
    """An EFI system partition as a folder (qemu serves it as a FAT disk): shim as the default
    loader, GRUB beside it with a grub.cfg booting the kernel and the initramfs."""
    esp = work / ESP
    boot = esp / "EFI" / "BOOT"
    boot.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parts.shim, boot / "BOOTX64.EFI")
    shutil.copyfile(parts.grub, boot / "grubx64.efi")
    (boot / "grub.cfg").write_text(GRUB_CFG.format(cmdline=cmdline))
    shutil.copyfile(kernel, esp / "vmlinuz")
    shutil.move(initrd, esp / "initrd.cpio")
    return esp


def qemu_argv(
    parts: BootParts, variables: Path, esp: Path, memory_mb: int, accel: str
) -> list[str]:
    """A q35 machine with SMM (OVMF's Secure Boot build requires it), the firmware read-only,
    the variables a per-boot copy, the ESP folder as a virtio FAT disk."""
    for path in (variables, esp):
        if "," in str(path):
            raise HabanaError(f"{path}: qemu cannot take a path with a comma; move the cache")
    return [
        "qemu-system-x86_64",
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={parts.code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={variables}",
        "-drive",
        f"file=fat:{esp},format=raw,if=virtio,readonly=on",
        "-cpu",
        "max",
        *console_machine(memory_mb, accel),
    ]


@dataclass(frozen=True)
class SecureBootSetup:
    """A Secure Boot node for load tests: its boot parts and its firmware variables (the
    library's certificate enrolled, or another, or none), copied for each boot."""

    parts: BootParts
    variables: Path
    key_id: str = ""  # the key the library's modules are signed with, named in a refusal


def prepare(
    project_root: Path, cache: Path, certificate: bytes | None, key_id: str = ""
) -> SecureBootSetup:
    parts = find_parts(project_root)
    return SecureBootSetup(parts, enrolled_variables(parts, certificate, cache), key_id)


def boot_name(setup: SecureBootSetup | None) -> str:
    """Which boot a load test with this setup (or none) proves an image with."""
    return PLAIN if setup is None else SECURE_BOOT


def node_argv(
    setup: SecureBootSetup,
    work: Path,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    memory_mb: int,
    accel: str,
) -> list[str]:
    """One boot of the Secure Boot node: its ESP (the initramfs moved into it) and its own copy
    of the enrolled variables under `work`, and the qemu command that boots them."""
    esp = boot_disk(setup.parts, work, kernel, initrd, cmdline)
    variables = work / "OVMF_VARS.fd"
    shutil.copyfile(setup.variables, variables)
    return qemu_argv(setup.parts, variables, esp, memory_mb, accel)


# What the guest's console must show for a boot to count as a Secure Boot node's.
ENABLED = "secureboot: Secure boot enabled"
LOCKED = ("[integrity]", "[confidentiality]")


def secure_boot_problem(marks: Sequence[str]) -> str | None:
    """Why the guest's own lines do not prove Secure Boot with the kernel locked down, or None.
    `marks` are the texts of the lines the guest marked."""
    boot = [m for m in marks if m.startswith("boot ")]
    lockdown = next((m for m in marks if m.startswith("lockdown ")), "lockdown unknown")
    if not any(ENABLED in m for m in boot):
        return f"the guest did not report Secure Boot enabled ({lockdown})"
    if not any(state in lockdown for state in LOCKED):
        return f"Secure Boot is on but the kernel is not locked down ({lockdown})"
    return None
