from __future__ import annotations

import re
from dataclasses import replace

import pytest

from habana_tasks.build import labels
from habana_tasks.build.driver_package import BuildExclusive
from habana_tasks.build.labels import TargetInputs
from habana_tasks.build.plan import EXCLUDED, NODE_TRUST, Action, plan, plan_job, refused_by_node
from habana_tasks.core.errors import INPUTS as INPUTS_ORIGIN
from habana_tasks.core.errors import Failure, UsageError
from habana_tasks.registry.client import Existence, RemoteImage
from tests.samples import BASE, CONFIG, INPUTS, ONE_INPUT_CHANGED, TARGET, D

UNAVAILABLE = Failure("registry state", "HTTP 503 after 4 attempt(s)", transient=True)


def present(inputs: TargetInputs = INPUTS) -> RemoteImage:
    image_labels = labels.image_labels(CONFIG, TARGET, inputs, "2026-01-01T00:00:00Z", "false")
    return RemoteImage(TARGET.image, Existence.PRESENT, "sha256:" + "e" * 64, image_labels)


def test_absent_builds() -> None:
    job = plan_job(TARGET, INPUTS, RemoteImage(TARGET.image, Existence.ABSENT))
    assert (job.action, job.reason) == (Action.BUILD, "not in the repository")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", job.fingerprint or ""), job.fingerprint


@pytest.mark.parametrize("name", list(ONE_INPUT_CHANGED))
def test_each_input_changed_alone_changes_the_fingerprint_and_is_named(name: str) -> None:
    target, inputs = ONE_INPUT_CHANGED[name]
    before = plan_job(TARGET, INPUTS, RemoteImage(TARGET.image, Existence.ABSENT)).fingerprint
    job = plan_job(target, inputs, present())
    assert job.fingerprint != before
    assert (job.action, job.reason) == (Action.BUILD, f"stale: {name} changed")


def test_node_kernel_args_are_an_input_only_when_given() -> None:
    """Images made before node_kernel_args existed keep their fingerprint; dropping the
    arguments again makes an image that was tested with them stale."""
    assert "node kernel arguments" not in labels.input_values(TARGET, INPUTS)
    with_args = replace(TARGET, node_kernel_args=("efi=runtime", "iommu=pt"))
    tested = labels.image_labels(CONFIG, with_args, INPUTS, "2026-01-01T00:00:00Z", "false")
    assert tested[labels.INPUT_LABELS["node kernel arguments"]] == "efi=runtime iommu=pt"
    remote = RemoteImage(TARGET.image, Existence.PRESENT, D, tested)
    assert plan_job(with_args, INPUTS, remote).action is Action.SKIP
    job = plan_job(TARGET, INPUTS, remote)
    assert (job.action, job.reason) == (Action.BUILD, "stale: node kernel arguments changed")


def test_same_fingerprint_skips() -> None:
    job = plan_job(TARGET, INPUTS, present())
    assert job.action is Action.SKIP and job.reason.startswith("up to date")
    assert job.remote_digest == "sha256:" + "e" * 64


def test_changed_toolkit_rebuilds_and_says_why() -> None:
    newer = replace(INPUTS, toolkit=replace(INPUTS.toolkit, digest="sha256:" + "f" * 64))
    job = plan_job(TARGET, newer, present())
    assert (job.action, job.reason) == (Action.BUILD, "stale: toolkit image digest changed")


def test_two_changed_inputs_are_both_named() -> None:
    newer = replace(INPUTS, git_sha="1" * 40, dockerfile_sha256="2" * 64)
    job = plan_job(TARGET, newer, present())
    assert job.reason == "stale: driver git SHA, Dockerfile changed"


def test_image_without_fingerprint_rebuilds() -> None:
    remote = RemoteImage(TARGET.image, Existence.PRESENT, D, {"other": "label"})
    assert plan_job(TARGET, INPUTS, remote).reason == "stale: the image has no fingerprint label"


def test_unknown_state_fails_even_when_forced() -> None:
    remote = RemoteImage(
        TARGET.image,
        Existence.UNKNOWN,
        failure=UNAVAILABLE,
    )
    job = plan_job(TARGET, INPUTS, remote, force=True)
    assert job.action is Action.FAIL
    assert job.reason == "registry state unknown, not building: HTTP 503 after 4 attempt(s)"


def test_an_image_never_load_tested_is_rebuilt_when_load_tests_are_required() -> None:
    remote = present()  # labelled load-tested=false
    assert plan_job(TARGET, INPUTS, remote).action is Action.SKIP
    job = plan_job(TARGET, INPUTS, remote, require_load_test=True)
    assert (job.action, job.reason) == (Action.BUILD, "stale: never load-tested")
    tested = replace(remote, labels={**remote.labels, labels.LOAD_TESTED: "true"})
    job = plan_job(TARGET, INPUTS, tested, require_load_test=True)
    assert (job.action, job.load_tested, job.load_test_boot) == (Action.SKIP, True, "plain")


@pytest.mark.parametrize(
    ("label", "boot"),
    [("secure-boot", "secure-boot"), ("plain", "plain"), ("true", "plain"), ("false", None),
     ("yes", None)],
)  # fmt: skip
def test_the_load_tested_label_names_the_boot_that_proved_the_image(
    label: str, boot: str | None
) -> None:
    assert labels.load_test_boot({labels.LOAD_TESTED: label}) == boot


def test_a_secure_boot_library_rebuilds_an_image_a_plain_boot_proved() -> None:
    """A signing library proves images on a Secure Boot node: an image proven only by a plain
    boot is rebuilt once, and says why; one proven by Secure Boot is current."""
    plain = replace(present(), labels={**present().labels, labels.LOAD_TESTED: "plain"})
    job = plan_job(TARGET, INPUTS, plain, require_load_test=True, require_secure_boot=True)
    assert (job.action, job.reason) == (
        Action.BUILD,
        "stale: load-tested by a plain boot, not secure-boot",
    )
    proven = replace(plain, labels={**plain.labels, labels.LOAD_TESTED: "secure-boot"})
    job = plan_job(TARGET, INPUTS, proven, require_load_test=True, require_secure_boot=True)
    assert (job.action, job.load_test_boot) == (Action.SKIP, "secure-boot")
    # Either boot satisfies a library that boots plainly.
    assert plan_job(TARGET, INPUTS, proven, require_load_test=True).action is Action.SKIP
    assert plan_job(TARGET, INPUTS, plain, require_load_test=True).action is Action.SKIP


def test_force_rebuilds_an_up_to_date_image() -> None:
    job = plan_job(TARGET, INPUTS, present(), force=True)
    assert (job.action, job.reason) == (Action.BUILD, "forced")


def test_unresolved_inputs_fail_with_their_failure() -> None:
    remote = RemoteImage(TARGET.image, Existence.ABSENT)
    failure = Failure("resolve", "cannot reach r.example", "base image r.example/base:12", True)
    job = plan_job(TARGET, failure, remote)
    assert (job.action, job.reason, job.failure) == (
        Action.FAIL,
        "base image r.example/base:12: cannot reach r.example",
        failure,
    )


def test_an_unknown_registry_state_is_a_transient_failure() -> None:
    remote = RemoteImage(
        TARGET.image,
        Existence.UNKNOWN,
        failure=UNAVAILABLE,
    )
    job = plan_job(TARGET, INPUTS, remote)
    assert job.action is Action.FAIL and job.failure is not None
    assert (job.failure.step, job.failure.transient) == ("registry state", True)
    assert "HTTP 503" in job.failure.why


def test_plan_keeps_target_order() -> None:
    other = replace(TARGET, kernel="6.1.0-55-amd64", tag="6.1.0-1-6.1.0-55-amd64")
    jobs = plan(
        [TARGET, other],
        {TARGET.tag: INPUTS, other.tag: INPUTS},
        {TARGET.tag: present(), other.tag: RemoteImage(other.image, Existence.ABSENT)},
    )
    assert [(j.target.tag, j.action) for j in jobs] == [
        (TARGET.tag, Action.SKIP),
        (other.tag, Action.BUILD),
    ]


def test_labels_carry_provenance_and_no_secret() -> None:
    image_labels = labels.image_labels(CONFIG, TARGET, INPUTS, "2026-01-01T00:00:00Z", "false")
    # Inputs by digest only: no label says where one was pulled from (a mirror reproduces it).
    assert "org.opencontainers.image.base.name" not in image_labels
    assert not [v for v in image_labels.values() if "r.example/" in v]
    assert image_labels["org.opencontainers.image.base.digest"] == D
    assert image_labels["org.opencontainers.image.revision"] == INPUTS.git_sha
    assert image_labels["org.opencontainers.image.version"] == "6.1.0-1"
    assert image_labels["io.habana-ai-driver.kernel.release"] == "6.1.0-56-amd64"
    assert image_labels["io.habana-ai-driver.driver.package.sha256"] == "c" * 64
    assert image_labels["io.habana-ai-driver.driver.package"] == "habanalabs-6.1.0-1.el8.noarch.rpm"
    assert image_labels["io.habana-ai-driver.load-tested"] == "false"
    everything = " ".join([*image_labels.values(), *labels.build_args(TARGET, INPUTS).values()])
    assert "secret" not in everything and "token" not in everything


def test_fingerprint_follows_digests_not_registry_names() -> None:
    mirrored = replace(
        INPUTS,
        base=replace(BASE, name="mirror.example/base"),
        toolkit=replace(INPUTS.toolkit, name="mirror.example/dtk"),
    )
    assert labels.build_args(TARGET, mirrored)["BASE_IMAGE"].startswith("mirror.example/base@")
    assert labels.fingerprint(TARGET, mirrored) == labels.fingerprint(TARGET, INPUTS)


def test_fingerprint_ignores_created_time_and_load_test_but_not_inputs() -> None:
    monday = labels.image_labels(CONFIG, TARGET, INPUTS, "2026-01-05T00:00:00Z", "plain")
    friday = labels.image_labels(CONFIG, TARGET, INPUTS, "2026-01-09T00:00:00Z", "false")
    assert monday[labels.FINGERPRINT] == friday[labels.FINGERPRINT]
    changed = replace(INPUTS, package=replace(INPUTS.package, sha256="9" * 64))
    assert labels.fingerprint(TARGET, INPUTS) != labels.fingerprint(TARGET, changed)


def test_without_a_base_the_build_starts_from_scratch_with_the_flavours_tools() -> None:
    scratch = replace(INPUTS, base=None)
    args = labels.build_args(TARGET, scratch)
    assert (args["BASE_IMAGE"], args["IMAGE_TOOLS"]) == ("scratch", "sh mkdir cp")
    kmm1 = labels.build_args(replace(TARGET, flavour="kmm1"), scratch)["IMAGE_TOOLS"]
    assert kmm1 == "sh mkdir cp modprobe depmod sleep"
    # A base brings its own tools: nothing is copied into it.
    assert labels.build_args(TARGET, INPUTS)["IMAGE_TOOLS"] == ""
    image_labels = labels.image_labels(CONFIG, TARGET, scratch, labels.rfc3339(0), "false")
    assert "org.opencontainers.image.base.name" not in image_labels
    assert "org.opencontainers.image.base.digest" not in image_labels
    assert image_labels["io.habana-ai-driver.image.flavour"] == "minimal"
    assert image_labels["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    assert labels.fingerprint(TARGET, scratch) != labels.fingerprint(TARGET, INPUTS)


def test_an_image_from_before_flavours_is_stale_once_and_says_why() -> None:
    """Images built before flavours carry no flavour label and were built on a base."""
    old = dict(present().labels)
    del old["io.habana-ai-driver.image.flavour"]
    old[labels.FINGERPRINT] = "sha256:" + "0" * 64
    remote = RemoteImage(TARGET.image, Existence.PRESENT, "sha256:" + "e" * 64, old)
    job = plan_job(TARGET, replace(INPUTS, base=None), remote)
    assert job.action is Action.BUILD
    assert job.reason == "stale: base image digest, image flavour changed"


@pytest.mark.parametrize(
    ("value", "epoch"), [(None, 0), ("", 0), ("1700000000", 1700000000), (" 5 ", 5)]
)
def test_the_source_date_is_the_environments_or_the_epoch(value: str | None, epoch: int) -> None:
    environ = {} if value is None else {"SOURCE_DATE_EPOCH": value}
    assert labels.source_date_epoch(environ) == epoch
    assert labels.epoch_of(labels.rfc3339(epoch)) == epoch


@pytest.mark.parametrize("value", ["-1", "yesterday", "1.5", "0x10"])
def test_a_malformed_source_date_is_one_usage_line(value: str) -> None:
    with pytest.raises(UsageError, match=r"^SOURCE_DATE_EPOCH='.*': expected seconds since 1970"):
        labels.source_date_epoch({"SOURCE_DATE_EPOCH": value})


def test_a_kernel_that_trusts_no_machine_key_is_flagged_not_built() -> None:
    pending = plan_job(TARGET, INPUTS, RemoteImage(TARGET.image, Existence.ABSENT))
    flagged = refused_by_node(pending, ["EFI runtime services are off: X"])
    assert flagged.action is Action.FAIL and flagged.failure is not None
    assert (flagged.failure.step, flagged.failure.origin) == (NODE_TRUST, "inputs")
    assert flagged.reason == (
        f"a Secure Boot node would refuse its modules: {TARGET.kernel} as built loads no "
        "machine-owner keys (EFI runtime services are off: X)"
    )
    booted = replace(TARGET, node_kernel_args=("noefi",))
    job = refused_by_node(replace(pending, target=booted), ["off"])
    assert "booted with noefi loads no machine-owner keys" in job.reason
    assert refused_by_node(pending, []) == pending  # nothing stands in the way
    current = plan_job(TARGET, INPUTS, present())
    assert refused_by_node(current, ["off"]) == current  # only pending work is flagged


def test_a_kernel_the_driver_package_excludes_is_refused_before_building() -> None:
    """DKMS's BUILD_EXCLUSIVE_KERNEL in the package's dkms.conf: not built, whatever the
    registry holds, with the rule named; a kernel it allows is planned as usual."""
    only_deb13 = replace(INPUTS, exclusive=BuildExclusive("\\+deb13-"))
    for remote in (RemoteImage(TARGET.image, Existence.ABSENT), present()):
        job = plan_job(TARGET, only_deb13, remote, force=True)
        assert job.action is Action.FAIL and job.failure is not None
        assert job.failure.step == EXCLUDED and job.failure.origin == INPUTS_ORIGIN
        assert job.reason == (
            f"driver {TARGET.driver} is not built for {TARGET.kernel}: its dkms.conf builds "
            f'only for a kernel matching BUILD_EXCLUSIVE_KERNEL="\\+deb13-", and '
            f"{TARGET.kernel} does not match (DKMS skips it)"
        )
    allowed = replace(INPUTS, exclusive=BuildExclusive(re.escape(TARGET.kernel)))
    assert plan_job(TARGET, allowed, RemoteImage(TARGET.image, Existence.ABSENT)).action is (
        Action.BUILD
    )
