"""Failures remembered in the repository: recorded, held, retried on an input change or on request,
cleared by a push, pruned with their pair. FakeRegistry speaks the upload API; the same path runs
against docker-registry in tests/integration/test_pipeline.py (test 9)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import habana_tasks
from habana_tasks.build import failure_records, metadata
from habana_tasks.build.driver_package import DriverSource
from habana_tasks.build.failure_records import FailureRecord, memorable, record_tag
from habana_tasks.build.plan import Action
from habana_tasks.build.results import JobStatus
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.errors import HOST, INPUTS, Failure
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.maintenance import prune, status
from habana_tasks.maintenance.status import State
from habana_tasks.registry.client import RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST
from tests.conftest import ROOT
from tests.fake_podman import KERNELS, FakePodman, library, pushes, run
from tests.fake_registry import FakeRegistry, digest

MODPOST = 'ERROR: modpost: "hwmon_device_register_with_info" [habanalabs.ko] undefined!'
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package boundary, as in test_pipeline_decisions (real: test_driver_packages.py)."""
    monkeypatch.setattr(
        metadata, "read_driver_source", lambda path, version, name=None: DriverSource("abcdef1")
    )


def records(fake: FakeRegistry) -> dict[str, dict[str, str]]:
    """The record tags in the library repository, with their annotations."""
    found = {}
    for key, (_, body) in fake.manifests.items():
        repo, tag = key.split(":", 1)
        if repo == "library/driver" and failure_records.is_record_tag(tag):
            found[tag] = json.loads(body)["annotations"]
    return found


def builds(runner: FakePodman) -> list[str]:
    """The compiles a run started (a pair held or skipped starts none), by release."""
    return runner.compiles


def test_a_failure_of_the_inputs_is_recorded_held_then_retried_when_an_input_changes(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    failing = cfg.targets[1]
    first = FakePodman(fake)
    first.failing_builds[KERNELS[1]] = MODPOST
    result = run(first, cfg, tmp_path)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.FAILED]
    assert result.exit_code == errors.TARGET_FAILED
    found = records(fake)
    assert list(found) == [record_tag(failing.tag)]
    annotations = found[record_tag(failing.tag)]
    prefix = failure_records.ANNOTATION
    assert annotations[prefix + "fingerprint"] == result.planned.jobs[1].fingerprint
    assert annotations[prefix + "step"] == "build"
    assert MODPOST in annotations[prefix + "cause"]
    assert annotations[prefix + "tool"] == failure_records.tool_digest()

    # Second run, nothing changed: held with the reason, no build, no new failure (exit 0).
    second = FakePodman(fake)
    second.failing_builds[KERNELS[1]] = MODPOST
    again = run(second, cfg, tmp_path)
    held = again.planned.jobs[1]
    assert held.action is Action.HOLD
    assert held.reason.startswith("failed before with the same inputs (20")
    assert MODPOST in held.reason and "build: " in held.reason
    assert [r.status for r in again.results] == [JobStatus.SKIPPED, JobStatus.HELD]
    assert builds(second) == [] and again.exit_code == errors.OK
    assert "1 held" in again.planned.summary
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    shown = status.library_status(project, cfg)
    assert [(i.state, i.reason) for i in shown.items][1] == (State.FAILING, held.reason)
    assert shown.orphans == ()  # a listed pair's record is not an orphan

    # --retry-failed builds it; it fails again: one record still, the old one deleted.
    third = FakePodman(fake)
    third.failing_builds[KERNELS[1]] = MODPOST + " (again)"
    retried = run(third, cfg, tmp_path, retry_failed=True)
    assert "retrying: failed before" in retried.planned.jobs[1].reason
    assert len(builds(third)) == 1 and retried.exit_code == errors.TARGET_FAILED
    assert list(records(fake)) == [record_tag(failing.tag)]
    assert "(again)" in records(fake)[record_tag(failing.tag)][prefix + "cause"]
    old_digest = held.record.digest if held.record else ""
    assert not any(key.endswith(old_digest) for key in fake.manifests)

    # A new toolkit for that kernel (an input): built without being asked, and once it is
    # pushed its record is gone.
    fake.add_image("dtk", KERNELS[1], {"kernel": KERNELS[1], "rebuilt": "yes"}, OCI_MANIFEST)
    fourth = FakePodman(fake)
    changed = run(fourth, cfg, tmp_path)
    assert changed.planned.jobs[1].action is Action.BUILD
    assert [r.status for r in changed.results] == [JobStatus.SKIPPED, JobStatus.OK]
    assert pushes(fourth) == [f"docker://{failing.image}"]
    assert records(fake) == {}


def test_failures_of_the_moment_are_not_remembered_and_no_push_records_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    assert memorable(Failure("build", "x", origin=INPUTS))
    assert memorable(Failure("load test", "x", origin=INPUTS))
    assert not memorable(Failure("build", "x", transient=True, origin=INPUTS))
    assert not memorable(Failure("build", "podman refused the build command", origin=HOST))
    assert not memorable(Failure("build", "a failure of no known origin"))
    assert not memorable(Failure("pull", "manifest unknown"))
    assert not memorable(Failure("push", "denied")) and not memorable(None)
    runner = FakePodman(fake)
    runner.failing_builds[KERNELS[0]] = MODPOST
    cfg = library(fake, tmp_path)
    run(runner, cfg, tmp_path, push=False)
    assert records(fake) == {}


@pytest.mark.parametrize(
    ("code", "tail", "said"),
    [
        (
            125,
            ["Error: cannot set --network other than host with --isolation chroot"],
            "podman refused the build command: Error: cannot set --network other than host",
        ),
        (
            1,
            [
                "error running container: from /usr/bin/crun creating container for [/bin/sh -c "
                "make]: cgroups in hybrid mode not supported",
                'Error: building at STEP "RUN make": while running runtime: exit status 1',
            ],
            "the container runtime could not start a build step: cgroups in hybrid mode",
        ),
        (
            2,
            [
                "cc1: fatal error: error writing to /tmp/ccX.s: No space left on device",
                'Error: building at STEP "RUN make": while running runtime: exit status 2',
            ],
            "the host's storage failed: cc1: fatal error",
        ),
    ],
)
def test_a_failure_of_the_host_is_not_recorded_and_the_next_run_builds_the_pair(
    fake: FakeRegistry, tmp_path: Path, code: int, tail: list[str], said: str
) -> None:
    cfg = library(fake, tmp_path)
    first = FakePodman(fake)
    first.failing_builds[KERNELS[1]] = MODPOST
    first.host_failure = (code, tail)
    result = run(first, cfg, tmp_path)
    failed = result.results[1]
    assert failed.failure is not None and failed.failure.origin == HOST
    assert failed.detail.startswith(said) and failed.detail.endswith(
        "; nothing about this pair is recorded"
    )
    assert result.exit_code == errors.HOST_FAILED and records(fake) == {}
    # The host is fixed: the next run builds the pair, unasked.
    second = FakePodman(fake)
    again = run(second, cfg, tmp_path)
    assert again.planned.jobs[1].action is Action.BUILD and len(builds(second)) == 1
    assert again.exit_code == errors.OK


def test_a_record_without_an_origin_holds_nothing(fake: FakeRegistry, tmp_path: Path) -> None:
    """An older version recorded the host's failures too, without saying whose they were: such
    a record does not hold its pair, which is built and, once pushed, the record deleted."""
    cfg = library(fake, tmp_path)
    first = FakePodman(fake)
    first.failing_builds[KERNELS[1]] = MODPOST
    run(first, cfg, tmp_path)
    (tag,) = records(fake)
    media_type, body = fake.manifests.pop(f"library/driver:{tag}")
    del fake.manifests[f"library/driver:{digest(body)}"]
    manifest = json.loads(body)
    del manifest["annotations"][failure_records.ANNOTATION + "origin"]
    older = json.dumps(manifest).encode()
    for ref in (tag, digest(older)):
        fake.manifests[f"library/driver:{ref}"] = (media_type, older)
    second = FakePodman(fake)
    again = run(second, cfg, tmp_path)
    assert again.planned.jobs[1].action is Action.BUILD
    assert [r.status for r in again.results] == [JobStatus.SKIPPED, JobStatus.OK]
    assert records(fake) == {}


def test_unreadable_records_never_hold_a_pair_back(fake: FakeRegistry, tmp_path: Path) -> None:
    """The tag list answers 500: the plan builds what is pending and says why it could not
    look; the memory is an optimisation, never a reason not to build."""
    cfg = library(fake, tmp_path)

    def broken(path: str) -> tuple[int, dict[str, str], bytes] | None:
        return (500, {}, b"") if path.startswith("/v2/library/driver/tags/list") else None

    fake.hook = broken
    result = run(FakePodman(fake), cfg, tmp_path)
    assert [j.action for j in result.planned.jobs] == [Action.BUILD, Action.BUILD]
    assert "failure records unread, pending pairs are built" in result.planned.summary


def test_a_record_of_a_pair_no_longer_listed_is_pruned_and_a_listed_one_kept(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    client = RegistryClient([fake.host], HTTPClient(RetryPolicy(attempts=1)))
    for tag in (cfg.targets[0].tag, "6.1.0-1-6.1.0-1-amd64"):
        record = FailureRecord(tag, "sha256:f", "sha256:t", "2026-12-01T00:00:00Z", "build", "x")
        failure_records.write_record(client, cfg.repository, record)
    assert status.orphan_tags(list(records(fake)), cfg.targets) == ["failed-6.1.0-1-6.1.0-1-amd64"]
    count, outcomes = prune.prune_library(cfg, client, older_than_days=30, apply=True, now=NOW)
    assert count == 2
    assert [(o.item.tag, o.item.reason, o.deleted) for o in outcomes] == [
        ("failed-6.1.0-1-6.1.0-1-amd64", "failure record of a pair no longer listed", True)
    ]
    assert list(records(fake)) == [record_tag(cfg.targets[0].tag)]


@pytest.mark.parametrize("length", [10, 121, 128])
def test_a_record_tag_is_a_valid_tag_of_its_own(length: int) -> None:
    tag = "1" + "x" * (length - 1)
    named = record_tag(tag)
    assert len(named) <= 128 and named.startswith("failed-")
    assert named != record_tag(tag[:-1] + "y")
    assert failure_records.is_record_tag(named) and not failure_records.is_record_tag(tag)


def test_the_tool_digest_is_every_module_of_the_package_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record names the code that judged the pair: sha256 over each .py file's path (relative,
    in path order), a NUL and its bytes. Worked here on a two-module package by hand."""
    package = tmp_path / "habana_tasks"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_bytes(b"")
    (package / "core" / "errors.py").write_bytes(b"X = 1\n")
    monkeypatch.setattr(habana_tasks, "__file__", str(package / "__init__.py"))

    def digest() -> str:
        failure_records.tool_digest.cache_clear()  # kept per process; read afresh here
        return failure_records.tool_digest()

    try:
        by_hand = hashlib.sha256(b"__init__.py\0" + b"core/errors.py\0X = 1\n").hexdigest()
        assert digest() == f"sha256:{by_hand}"
        (package / "README.md").write_text("not code")
        (package / "core" / "data.json").write_text("{}")
        assert digest() == f"sha256:{by_hand}"
        (package / "core" / "errors.py").write_bytes(b"X = 2\n")
        assert digest() != f"sha256:{by_hand}"
    finally:
        failure_records.tool_digest.cache_clear()
