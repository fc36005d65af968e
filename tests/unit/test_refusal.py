"""A Secure Boot node's module refusal, named from the console and the kernel's configuration:
each of the four causes, each reason a kernel has for loading no machine-owner key, and what the
node's kernel arguments change. The boots that produce these consoles run in
tests/integration/test_refusals.py."""

from __future__ import annotations

import pytest

from habana_tasks.verification import refusal
from habana_tasks.verification.console import MARK
from habana_tasks.verification.verdict import TrustContext, evaluate

RELEASE = "6.1.0-56-rt-amd64"
OURS = "3a1f0c9d2b7e4f60a1b2c3d4e5f60718293a4b5c"
DEBIAN_CA = "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"
STANDARD = (
    "CONFIG_LOAD_UEFI_KEYS=y\nCONFIG_INTEGRITY_MACHINE_KEYRING=y\n"
    "# CONFIG_EFI_DISABLE_RUNTIME is not set\n"
)
REALTIME = STANDARD.replace(
    "# CONFIG_EFI_DISABLE_RUNTIME is not set", "CONFIG_EFI_DISABLE_RUNTIME=y"
)
BOOTED = [
    f"{MARK} booted {RELEASE}",
    f"{MARK} lockdown none [integrity] confidentiality",
    f"{MARK} boot [    0.000000] efi: EFI v2.70 by EDK II",
    f"{MARK} boot [    0.000000] secureboot: Secure boot enabled",
]
MOK_LOADED = [
    f"{MARK} boot [    1.101] integrity: Loading X.509 certificate: UEFI:MokListRT",
    f"{MARK} boot [    1.102] integrity: Loaded X.509 cert '{DEBIAN_CA}'",
]


def refused(kernel_line: str, modprobe_error: str) -> list[str]:
    """The guest's lines when modprobe fails and the kernel says why."""
    return [
        f"{MARK} modprobe: modprobe: ERROR: could not insert 'habanalabs': {modprobe_error}",
        f"{MARK} FAIL modprobe -d /tmp/opt habanalabs failed: modprobe: ERROR: could not "
        f"insert 'habanalabs': {modprobe_error}",
        f"{MARK} dmesg [    3.2] {kernel_line}",
        f"{MARK} FAIL",
    ]


UNAVAILABLE = refused(
    "Loading of module with unavailable key is rejected", "Key was rejected by service"
)


def test_a_kernel_without_runtime_services_loads_no_machine_key_and_says_how_to_fix_it() -> None:
    found = refusal.explain([*BOOTED, *UNAVAILABLE], REALTIME, (), OURS)
    assert found is not None and found.cause == refusal.NO_MACHINE_KEYS
    assert "CONFIG_EFI_DISABLE_RUNTIME=y" in found.reason and "efi=runtime" in found.reason
    assert found.evidence[0] == "Loading of module with unavailable key is rejected"


@pytest.mark.parametrize(
    ("config", "args", "named"),
    [
        (STANDARD.replace("CONFIG_LOAD_UEFI_KEYS=y", ""), (), "CONFIG_LOAD_UEFI_KEYS is not set"),
        (
            STANDARD.replace("CONFIG_INTEGRITY_MACHINE_KEYRING=y", ""),
            (),
            "CONFIG_INTEGRITY_MACHINE_KEYRING is not set",
        ),
        (STANDARD, ("efi=noruntime",), "off: the kernel arguments say efi=noruntime"),
        (STANDARD, ("noefi",), "off: the kernel arguments say noefi"),
        (REALTIME, ("efi=runtime",), "its configuration shows no reason"),
    ],
)
def test_each_reason_for_no_machine_keys_comes_from_the_configuration(
    config: str, args: tuple[str, ...], named: str
) -> None:
    found = refusal.explain([*BOOTED, *UNAVAILABLE], config, args, OURS)
    assert found is not None and found.cause == refusal.NO_MACHINE_KEYS
    assert named in found.reason, found.reason


def test_a_boot_without_uefi_firmware_has_no_machine_keys_to_load() -> None:
    plain = [line for line in BOOTED if "efi: EFI v" not in line]
    found = refusal.explain([*plain, *UNAVAILABLE], STANDARD, (), OURS)
    assert found is not None and found.cause == refusal.NO_MACHINE_KEYS
    assert "did not boot through UEFI firmware" in found.reason


def test_without_a_configuration_the_refusal_says_it_cannot_tell_why() -> None:
    found = refusal.explain([*BOOTED, *UNAVAILABLE], None, (), OURS)
    assert found is not None and found.cause == refusal.NO_MACHINE_KEYS
    assert "no kernel configuration" in found.reason


def test_keys_loaded_but_not_ours_names_what_was_loaded_and_our_key() -> None:
    found = refusal.explain([*BOOTED, *MOK_LOADED, *UNAVAILABLE], STANDARD, (), OURS)
    assert found is not None and found.cause == refusal.NOT_OUR_KEY
    assert OURS in found.reason and DEBIAN_CA in found.reason
    assert "integrity: Loaded X.509 cert" in found.evidence[-1]


def test_our_key_loaded_yet_refused_is_said_as_such() -> None:
    ours = f"{MARK} boot [    1.103] integrity: Loaded X.509 cert 'Library: {OURS}'"
    found = refusal.explain([*BOOTED, *MOK_LOADED, ours, *UNAVAILABLE], STANDARD, (), OURS)
    assert found is not None and found.cause == refusal.NOT_OUR_KEY
    assert "does not trust it for modules" in found.reason


def test_a_changed_module_is_a_signature_that_does_not_verify() -> None:
    lines = [
        *BOOTED,
        *MOK_LOADED,
        f"{MARK} modprobe: modprobe: ERROR: could not insert 'habanalabs': "
        "Key was rejected by service",
        f"{MARK} FAIL modprobe -d /tmp/opt habanalabs failed: modprobe: ERROR: could not "
        "insert 'habanalabs': Key was rejected by service",
        f"{MARK} FAIL",
    ]
    found = refusal.explain(lines, STANDARD, (), OURS)
    assert found is not None and found.cause == refusal.SIGNATURE_INVALID
    assert "changed after it was signed" in found.reason


@pytest.mark.parametrize(
    ("kernel_line", "error", "key_id", "cause"),
    [
        ("Loading of unsigned module is rejected", "Key was rejected by service", "", "unsigned"),
        # Lockdown without enforcement says one thing for both: signing decides which it is.
        (
            "Lockdown: modprobe: unsigned module loading is restricted; see man kernel_lockdown.7",
            "Operation not permitted",
            "",
            refusal.UNSIGNED,
        ),
        (
            "Lockdown: modprobe: unsigned module loading is restricted; see man kernel_lockdown.7",
            "Operation not permitted",
            OURS,
            refusal.NO_MACHINE_KEYS,
        ),
    ],
)
def test_unsigned_and_untrusted_are_told_apart(
    kernel_line: str, error: str, key_id: str, cause: str
) -> None:
    found = refusal.explain([*BOOTED, *refused(kernel_line, error)], REALTIME, (), key_id)
    assert found is not None and found.cause == cause


def test_a_failure_that_is_not_a_signature_refusal_is_not_explained_as_one() -> None:
    lines = refused("habanalabs: disagrees about version of symbol foo", "Invalid argument")
    assert refusal.explain([*BOOTED, *lines], STANDARD, (), OURS) is None


@pytest.mark.parametrize(
    ("config", "args", "on"),
    [
        (REALTIME, (), False),
        (REALTIME, ("efi=runtime",), True),
        (REALTIME, ("efi=debug,runtime",), True),
        (STANDARD, (), True),
        (STANDARD, ("efi=runtime", "efi=noruntime"), False),
        (REALTIME, ("efi=runtime,noruntime",), True),  # within one argument, runtime wins
        (STANDARD, ("noefi",), False),
    ],
)
def test_runtime_services_follow_the_config_then_each_efi_argument_in_order(
    config: str, args: tuple[str, ...], on: bool
) -> None:
    assert refusal.runtime_services_on(refusal.config_values(config), args) is on
    assert (refusal.machine_key_blockers(config, args) == []) is on


def test_the_load_tests_verdict_names_the_module_and_the_cause() -> None:
    trust = TrustContext(REALTIME, (), OURS)
    passed, reason, evidence = evaluate([*BOOTED, *UNAVAILABLE], RELEASE, True, trust)
    assert not passed
    assert reason.startswith("habanalabs refused: the kernel loaded no machine-owner keys (")
    assert "Loading of module with unavailable key is rejected" in evidence
    assert not any(line.startswith("LOAD-TEST:") for line in evidence[:2])
