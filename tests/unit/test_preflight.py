from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from habana_tasks.build import labels
from habana_tasks.build.driver_package import BuildExclusive, PackageCache
from habana_tasks.build.plan import Action, BuildJob
from habana_tasks.build.service import PlannedRun
from habana_tasks.config.tags import image_tag
from habana_tasks.config.targets import BuildTarget, SigningFiles
from habana_tasks.core.errors import ConfigError
from habana_tasks.maintenance import preflight
from habana_tasks.registry.client import RegistryClient
from tests.samples import CONFIG, INPUTS, TARGET

RELEASE = preflight.KernelSource(
    "OpenShift 4.16.12 (x86_64)", TARGET.kernel, "x86_64", release="4.16.12"
)
CONFIG_ONE = replace(CONFIG, targets=(TARGET,))


def image_labels(load_tested: bool = True) -> dict[str, str]:
    claim = "plain" if load_tested else "false"
    return labels.image_labels(CONFIG_ONE, TARGET, INPUTS, "2026-01-01T00:00:00Z", claim)


def jobs(action: Action, reason: str = "up to date") -> dict[tuple[str, str], BuildJob]:
    return {(TARGET.kernel, TARGET.driver): BuildJob(TARGET, action, reason)}


def test_every_answer_yes_is_ready() -> None:
    found = preflight.answer(
        RELEASE, TARGET.driver, CONFIG_ONE, jobs(Action.SKIP), lambda _: image_labels()
    )
    assert (found.present, found.load_tested, found.signed, found.current, found.ok) == (
        True, True, None, True, True
    )  # fmt: skip
    assert (found.detail, found.action) == ("ready", "")


def test_each_no_says_what_to_do() -> None:
    build = f"invoke build --kernel {TARGET.kernel} --driver {TARGET.driver}"
    stale = preflight.answer(
        RELEASE,
        TARGET.driver,
        CONFIG_ONE,
        jobs(Action.BUILD, "stale: toolkit image digest changed"),
        lambda _: image_labels(load_tested=False),
    )
    assert not stale.ok and stale.action == build
    assert stale.detail == "stale: toolkit image digest changed; not load-tested"
    missing = preflight.answer(
        RELEASE, TARGET.driver, CONFIG_ONE, jobs(Action.BUILD, "missing"), lambda _: None
    )
    assert (missing.present, missing.detail, missing.action) == (False, "no image", build)
    unknown_kernel = replace(RELEASE, kernel="5.14.0-427.el9.x86_64")
    new = preflight.answer(unknown_kernel, TARGET.driver, CONFIG_ONE, {}, lambda _: None)
    assert new.detail == "kernel not in versions.toml"
    assert new.action == (
        f"invoke discover --minor 4.16 --arch x86_64 --driver {TARGET.driver} && invoke build-all"
    )
    signing = replace(CONFIG_ONE, signing=SigningFiles(Path("c.der"), Path("k.pem")))
    unsigned = preflight.answer(
        RELEASE, TARGET.driver, signing, jobs(Action.SKIP), lambda _: image_labels()
    )
    assert (unsigned.signed, unsigned.ok, unsigned.detail) == (False, False, "unsigned")
    cause = "failed before with the same inputs (2026-12-02): build: modpost: x undefined!"
    held = preflight.answer(
        RELEASE, TARGET.driver, CONFIG_ONE, jobs(Action.HOLD, cause), lambda _: None
    )
    assert (held.ok, held.detail) == (False, cause)
    assert held.action == f"fix the cause (or change an input), then {build} --retry-failed"


def test_node_lists_are_read_from_kubectl_json(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    node_info = {"kernelVersion": "6.1.0-56-amd64", "architecture": "amd64"}
    node = {"metadata": {"name": "n1"}, "status": {"nodeInfo": node_info}}
    path.write_text(json.dumps({"items": [node]}))
    assert preflight.node_kernels(path) == [
        preflight.KernelSource("node n1", "6.1.0-56-amd64", "x86_64")
    ]
    bad = {"metadata": {"name": "n2"}, "status": {"nodeInfo": {"architecture": "riscv64"}}}
    path.write_text(json.dumps({"items": [node, bad, "x"]}))
    with pytest.raises(ConfigError) as info:
        preflight.node_kernels(path)
    assert info.value.problems == [
        f"{path}: items[1].status.nodeInfo.kernelVersion = None: expected `uname -r`",
        f"{path}: items[2].status.nodeInfo.kernelVersion = None: expected `uname -r`",
    ]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        preflight.node_kernels(path)
    path.write_text('{"items": []}')
    with pytest.raises(ConfigError, match="expected a non-empty list of nodes"):
        preflight.node_kernels(path)


def test_an_image_the_listed_tags_lack_is_not_asked_for(
    no_side_effects: list[str], tmp_path: Path
) -> None:
    """With the tags status has just listed, a kernel the versions file lacks is answered
    without a request when its tag is not among them, and asked about when it is."""
    config = replace(CONFIG_ONE, repository="127.0.0.1:9/lib/drv")
    node = preflight.KernelSource("node n", "6.1.0-99-amd64", "x86_64")
    tag = image_tag(TARGET.driver, "6.1.0-99-amd64")
    registry = RegistryClient(["127.0.0.1:9"])

    def plan(targets: Sequence[BuildTarget]) -> PlannedRun:
        """Only the driver's own pair, for its package's kernel rule (here: already known)."""
        assert list(targets) == [TARGET]
        return PlannedRun((), {}, registry, PackageCache(tmp_path), 0.0)

    answers, problems, _ = preflight.check(
        config, [node], [TARGET.driver], registry, plan, listed=[TARGET.tag]
    )
    assert problems == [] and len(answers) == 1
    assert (answers[0].present, answers[0].ok) == (False, False)
    assert answers[0].detail == "kernel not in versions.toml"
    assert no_side_effects == []
    # Listed (a tag left from an earlier versions file): its labels are asked for.
    with pytest.raises(AssertionError, match="a connection was attempted"):
        preflight.check(config, [node], [TARGET.driver], registry, plan, listed=[tag])
    assert no_side_effects == ["connect ('127.0.0.1', 9)"]


def test_a_driver_whose_package_refuses_the_kernel_is_not_asked_for_it() -> None:
    """DKMS's BUILD_EXCLUSIVE_KERNEL: a kernel the driver does not build for is no work (the
    plan's refusal, or the package's rule for a kernel not in the versions file), unless no
    driver at all serves that kernel."""
    rule = BuildExclusive(kernel=r"^6\.12\.[0-9]+\+deb13-")
    trixie = preflight.KernelSource("node t", "6.12.118+deb13-amd64", "x86_64")
    serves = preflight.answer(trixie, "6.12.0-1", CONFIG_ONE, {}, lambda _: None, rule)
    assert serves.detail == "kernel not in versions.toml" and not serves.ok
    refused = preflight.answer(RELEASE, "6.12.0-1", CONFIG_ONE, {}, lambda _: None, rule)
    assert refused.ok and refused.action == ""
    assert refused.detail == (
        f"not for this kernel: driver 6.12.0-1 is not built for {TARGET.kernel}: its dkms.conf "
        'builds only for a kernel matching BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-", '
        f"and {TARGET.kernel} does not match (DKMS skips it)"
    )
    ready = preflight.answer(
        RELEASE, TARGET.driver, CONFIG_ONE, jobs(Action.SKIP), lambda _: image_labels()
    )
    assert [a.ok for a in preflight.served([ready, refused])] == [True, True]
    (alone,) = preflight.served([refused])  # no driver serves the kernel: that is a "no"
    assert not alone.ok and "builds for this kernel" in alone.action


def test_a_ready_image_that_replaces_the_kernels_own_driver_says_so() -> None:
    found = {**image_labels(), labels.IN_TREE_REPLACED: "habanalabs,gaudi_rival"}
    ready = preflight.answer(RELEASE, TARGET.driver, CONFIG_ONE, jobs(Action.SKIP), lambda _: found)
    assert ready.ok and ready.detail == "ready; replaces the kernel's own habanalabs, gaudi_rival"
