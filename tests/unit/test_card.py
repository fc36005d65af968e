"""The node with the card: the image's devices from its modules.alias, the kernel's modules
claiming them (as udev's lookup matches them), and the files those modules need."""

from __future__ import annotations

import pytest

from habana_tasks.core.errors import CheckError
from habana_tasks.verification import card
from habana_tasks.verification.guest_init import init_script
from habana_tasks.verification.kernel_modules import parse_aliases, parse_depends
from habana_tasks.verification.verdict import evaluate

IMAGE_ALIAS = """# Aliases extracted from modules themselves.
alias pci:v00001DA3d00001020sv*sd*bc*sc*i* habanalabs
alias pci:v00001DA3d00001000sv*sd*bc*sc*i* habanalabs
alias usb:v1234p*d*dc*dsc*dp*ic*isc*ip*in* habanalabs
alias pci:v00008086d000010D3sv*sd*bc02sc00i* habana_example_ib
"""
KERNEL_ALIAS = """alias pci:v00001DA3d00001020sv*sd*bc*sc*i* habanalabs
alias pci:v00001DA3d*sv*sd*bc*sc*i* gaudi-rival
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias acpi*:PNP0A08:* other
"""
KERNEL_DEP = """kernel/drivers/accel/habanalabs/habanalabs.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm.ko.xz: kernel/drivers/base/x.ko.xz
kernel/drivers/base/x.ko.xz:
kernel/drivers/misc/gaudi-rival.ko.xz:
kernel/drivers/net/e1000e.ko.xz:
"""


def test_a_pci_pattern_becomes_the_modalias_a_matching_device_presents() -> None:
    assert card.device_modalias("pci:v00001DA3d00001020sv*sd*bc*sc*i*") == (
        "pci:v00001DA3d00001020sv00000000sd00000000bc00sc00i00"
    )
    assert card.device_modalias("pci:v00008086d000010D3sv*sd*bc02sc00i*") == (
        "pci:v00008086d000010D3sv00000000sd00000000bc02sc00i00"
    )
    assert card.device_modalias("usb:v1234p*d*dc*dsc*dp*ic*isc*ip*in*") is None
    assert card.device_modalias("pci:v1DA3d*") is None  # not the kernel's format


def test_the_card_is_the_devices_of_the_images_own_modules() -> None:
    assert card.card_devices(IMAGE_ALIAS, ["habanalabs"]) == (
        "pci:v00001DA3d00001000sv00000000sd00000000bc00sc00i00",
        "pci:v00001DA3d00001020sv00000000sd00000000bc00sc00i00",
    )
    assert len(card.card_devices(IMAGE_ALIAS, ["habanalabs", "habana_example_ib"])) == 3
    assert card.card_devices("", ["habanalabs"]) == ()


def test_every_kernel_module_claiming_a_device_is_found_by_its_alias() -> None:
    devices = card.card_devices(IMAGE_ALIAS, ["habanalabs"])
    aliases = parse_aliases(KERNEL_ALIAS)
    assert card.claimants(aliases, devices) == ("gaudi_rival", "habanalabs")
    assert card.claimants(aliases, devices[:1]) == ("gaudi_rival",)  # 1000: the rival only
    assert card.claimants(aliases, ()) == ()


def test_a_claimants_files_come_with_everything_they_depend_on() -> None:
    depends = parse_depends(KERNEL_DEP)
    assert card.closure(depends, ["kernel/drivers/accel/habanalabs/habanalabs.ko.xz"]) == (
        "kernel/drivers/accel/habanalabs/habanalabs.ko.xz",
        "kernel/drivers/base/x.ko.xz",
        "kernel/drivers/gpu/drm/drm.ko.xz",
    )
    assert card.closure(depends, ["kernel/not/shipped.ko"]) == ()


def test_the_guest_asks_for_the_cards_devices_then_removes_before_loading() -> None:
    script = init_script(
        ["habanalabs"],
        "6.12.117+deb13-amd64",
        card=["pci:v00001DA3d00001020"],
        removes=["habanalabs"],
    ).decode()
    udev = script.index("for device in pci:v00001DA3d00001020; do")
    removal = script.index("modprobe -rv habanalabs")
    load = script.index('modprobe -v -d "$dir" "$m"')
    assert udev < removal < load
    plain = init_script(["habanalabs"], "6.1.0-56-amd64").decode()
    assert 'if [ -n "" ]; then' in plain  # no removal asked: the worker only loads


@pytest.mark.parametrize("word", ["habanalabs; reboot", "$(id)", "a b", "", "pci:v*"])
def test_a_word_that_is_not_a_module_name_never_reaches_the_guests_shell(word: str) -> None:
    """Removal names may come from a pushed image's label."""
    with pytest.raises(CheckError, match="is not a module name or modalias"):
        init_script(["habanalabs"], "6.1.0-56-amd64", removes=[word])


R = "6.12.117+deb13-amd64"
CARD = f"LOAD-TEST: card pci:v1: udev loaded the node's /lib/modules/{R}/kernel/h.ko.xz"


def test_a_pass_replacing_the_kernels_module_says_so_with_its_proof() -> None:
    lines = [
        f"LOAD-TEST: booted {R}",
        CARD,
        "LOAD-TEST: node's own habanalabs loaded (taint '')",
        "LOAD-TEST: worker removed the in-tree habanalabs (modprobe -rv)",
        "LOAD-TEST: modprobe habanalabs ok",
        "LOAD-TEST: image's habanalabs loaded: the kernel marks it out-of-tree (taint OE)",
        "LOAD-TEST: PASS",
    ]
    passed, reason, proof = evaluate(lines, R)
    assert (passed, reason) == (True, "loaded, replacing the kernel's own habanalabs")
    assert proof == tuple(line.split("LOAD-TEST: ", 1)[1] for line in lines[1:4] + lines[5:6])


def test_the_kernels_module_left_loaded_fails_naming_it() -> None:
    fail = (
        "the habanalabs loaded is the kernel's own (in-tree, taint ''), not the image's: it was "
        "loaded before KMM's modprobe, which then did nothing"
    )
    lines = [f"LOAD-TEST: booted {R}", CARD, f"LOAD-TEST: FAIL {fail}", "LOAD-TEST: FAIL"]
    passed, reason, evidence = evaluate(lines, R)
    assert (passed, reason) == (False, fail)
    assert CARD.split("LOAD-TEST: ", 1)[1] in evidence
