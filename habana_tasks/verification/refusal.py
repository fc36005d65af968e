"""Why a Secure Boot node refused a module, named from evidence: what the guest's kernel said
(which refusal, which certificates it loaded) and what the target kernel's configuration and the
node's kernel arguments show. Pure: every shape is unit-tested, and the same rules flag a pair
before it is built (`machine_key_blockers`).

The kernel (6.1, kernel/module/signing.c and security/integrity) refuses a module under
enforcement in one of these ways: "Loading of unsigned module is rejected" (no signature);
"Loading of module with unavailable key is rejected" (signed by a key in none of its trusted
keyrings); or, with no such line, modprobe's "Key was rejected by service" (the signature does
not verify: the module changed after it was signed). Without enforcement, lockdown refuses both
of the first two with one message ("unsigned module loading is restricted"): a library that signs
its modules has had each signature checked against its certificate before the boot, so there it
means the key is not trusted. A machine-owner key (shim's MokListRT)
reaches the keyring modules are checked against only when the kernel reads UEFI variables
(runtime services on, CONFIG_LOAD_UEFI_KEYS) and has the machine keyring
(CONFIG_INTEGRITY_MACHINE_KEYRING); it then logs "Loading X.509 certificate: UEFI:MokListRT"
and "Loaded X.509 cert '<subject>: <key id>'" for each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from habana_tasks.verification.console import kernel_words

# The four causes, as report.json names them.
NO_MACHINE_KEYS = "no-machine-keys"
NOT_OUR_KEY = "key-not-enrolled"
SIGNATURE_INVALID = "signature-invalid"
UNSIGNED = "unsigned"

UNSIGNED_REFUSED = "Loading of unsigned module is rejected"
KEY_UNAVAILABLE = "Loading of module with unavailable key is rejected"
KEY_REJECTED = "Key was rejected by service"
LOCKDOWN_REFUSED = "unsigned module loading is restricted"
MOK_SOURCE = "UEFI:MokListRT"
LOADED_CERT = re.compile(r"Loaded X\.509 cert '(?P<name>[^']*)'")
# What makes a kernel skip reading the firmware's variables, and what brings them back.
RUNTIME_OFF_CONFIG = "CONFIG_EFI_DISABLE_RUNTIME"
LOAD_UEFI_KEYS = "CONFIG_LOAD_UEFI_KEYS"
MACHINE_KEYRING = "CONFIG_INTEGRITY_MACHINE_KEYRING"
RUNTIME_ON_ARG = "efi=runtime"
BOOTED_BY_UEFI = "efi: EFI v"  # the kernel's first line about the firmware, on a UEFI boot


@dataclass(frozen=True)
class Refusal:
    """One refusal: its cause (one of the four), a one-line reason, the lines that show it."""

    cause: str
    reason: str
    evidence: tuple[str, ...]


def config_values(kernel_config: str) -> dict[str, str]:
    """`CONFIG_X=value` lines; `# CONFIG_X is not set` and absent symbols are simply missing."""
    values: dict[str, str] = {}
    for line in kernel_config.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("CONFIG_"):
            values[name] = value
    return values


def runtime_services_on(values: Mapping[str, str], kernel_args: Sequence[str]) -> bool:
    """Whether the kernel keeps EFI runtime services (and so can read MokListRT) when booted
    with kernel_args: CONFIG_EFI_DISABLE_RUNTIME=y turns them off unless `efi=runtime`;
    `efi=noruntime` or `noefi` turns them off whatever the configuration."""
    on = values.get(RUNTIME_OFF_CONFIG) != "y"
    for arg in kernel_args:
        if arg.startswith("efi="):
            options = arg[len("efi=") :].split(",")
            # The kernel tests noruntime, then runtime, within one argument.
            on = False if "noruntime" in options else on
            on = True if "runtime" in options else on
    return on and "noefi" not in kernel_args


def machine_key_blockers(kernel_config: str, kernel_args: Sequence[str] = ()) -> list[str]:
    """Why this kernel, booted with kernel_args, would trust no machine-owner key for modules:
    each reason read from its configuration (empty: nothing in it stands in the way)."""
    values = config_values(kernel_config)
    blockers = []
    if not runtime_services_on(values, kernel_args):
        if values.get(RUNTIME_OFF_CONFIG) == "y" and RUNTIME_ON_ARG not in kernel_args:
            blockers.append(
                f"EFI runtime services are off: {RUNTIME_OFF_CONFIG}=y; "
                f"booting with {RUNTIME_ON_ARG} turns them on"
            )
        else:
            args = " ".join(a for a in kernel_args if a.startswith("efi=") or a == "noefi")
            blockers.append(f"EFI runtime services are off: the kernel arguments say {args}")
    if values.get(LOAD_UEFI_KEYS) != "y":
        blockers.append(f"{LOAD_UEFI_KEYS} is not set: the kernel never reads MokListRT")
    if values.get(MACHINE_KEYRING) != "y":
        blockers.append(
            f"{MACHINE_KEYRING} is not set: machine-owner keys are not trusted for modules"
        )
    return blockers


def explain(
    lines: Sequence[str],
    kernel_config: str | None,
    kernel_args: Sequence[str],
    key_id: str,
) -> Refusal | None:
    """The cause of a module refusal in this console (None: no module was refused for its
    signature). key_id is the subject key id of the certificate the modules are signed for
    ("" when the library does not sign them);
    kernel_config None means the toolkit carries no configuration."""
    said = [kernel_words(line) for line in lines]
    lockdown = [s for s in said if LOCKDOWN_REFUSED in s]
    refused_unsigned = [s for s in said if UNSIGNED_REFUSED in s] or ([] if key_id else lockdown)
    unavailable = [s for s in said if KEY_UNAVAILABLE in s] or (lockdown if key_id else [])
    rejected = [s for s in said if KEY_REJECTED in s]
    if refused_unsigned:
        return Refusal(
            UNSIGNED,
            "the module is unsigned; a kernel that enforces signatures (as under Secure Boot) "
            "loads only signed modules",
            (refused_unsigned[0],),
        )
    if unavailable:
        return _unavailable_key(said, unavailable[0], kernel_config, kernel_args, key_id)
    if rejected:
        return Refusal(
            SIGNATURE_INVALID,
            "the module's signature does not verify: it changed after it was signed",
            (rejected[0],),
        )
    return None


def _unavailable_key(
    said: Sequence[str],
    refusal: str,
    kernel_config: str | None,
    kernel_args: Sequence[str],
    key_id: str,
) -> Refusal:
    """Signed by a key the kernel does not trust: because it loaded no machine-owner key at
    all (and why), or because ours was not among those it loaded."""
    mok_lines = [s for s in said if MOK_SOURCE in s]
    loaded = [s for s in said if LOADED_CERT.search(s)]
    ours = [s for s in loaded if key_id and key_id.lower() in s.lower()]
    if not mok_lines:
        if not any(BOOTED_BY_UEFI in s for s in said):
            why = "the node did not boot through UEFI firmware: there is no MokListRT to read"
        elif kernel_config is None:
            why = "the toolkit carries no kernel configuration to say why"
        else:
            why = "; ".join(machine_key_blockers(kernel_config, kernel_args)) or (
                "its configuration shows no reason: the node's firmware may hold no MokListRT"
            )
        return Refusal(
            NO_MACHINE_KEYS,
            f"the kernel loaded no machine-owner keys ({why}), so no enrolled key can "
            "vouch for the module",
            (refusal, "no 'Loading X.509 certificate: UEFI:MokListRT' in the kernel log"),
        )
    if ours:
        return Refusal(
            NOT_OUR_KEY,
            f"the kernel loaded the library's certificate (key id {key_id}) from MokListRT "
            "but does not trust it for modules",
            (refusal, *ours),
        )
    names = [m["name"] for s in loaded if (m := LOADED_CERT.search(s))]
    return Refusal(
        NOT_OUR_KEY,
        f"the library's certificate (key id {key_id}) is not among the keys the kernel "
        f"loaded ({'; '.join(names) or 'none'}): enroll it as a machine-owner key",
        (refusal, *mok_lines, *loaded),
    )
