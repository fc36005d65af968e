"""The pipeline's decisions with fakes at both boundaries (FakeRunner for podman, kmod and qemu;
FakeRegistry for the registry API), in seconds. The same paths run for real in
tests/integration/test_pipeline.py and test_signals.py."""

from __future__ import annotations

import io
import json
import signal
import threading
from pathlib import Path

import pytest
from rich.console import Console

from habana_tasks.build import labels, metadata
from habana_tasks.build import service as build_service
from habana_tasks.build.driver_package import DriverSource
from habana_tasks.build.plan import Action
from habana_tasks.build.results import JobResult, JobStatus, read_report
from habana_tasks.cli.progress import PlainReporter
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.errors import Interrupted
from habana_tasks.engine.isolation import BuildIsolation
from habana_tasks.engine.podman import Podman
from habana_tasks.verification.console import MARK
from tests.conftest import ROOT
from tests.fake_podman import IB_REGISTER_CRC, KERNELS, FakePodman, library, pushes, run
from tests.fake_registry import FakeRegistry


@pytest.fixture(autouse=True)
def fixed_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package boundary: reading an RPM is tested for real in test_driver_packages.py."""
    monkeypatch.setattr(
        metadata, "read_driver_source", lambda path, version, name=None: DriverSource("abcdef1")
    )


def test_every_target_is_built_checked_pushed_and_verified(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    runner = FakePodman(fake)
    result = run(runner, library(fake, tmp_path), tmp_path)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    assert len(pushes(runner)) == 2
    for job, result_ in zip(result.planned.jobs, result.results, strict=True):
        pushed = json.loads(fake.manifests[f"library/driver:{job.target.tag}"][1])
        config_blob = json.loads(fake.blobs[pushed["config"]["digest"]])
        assert config_blob["config"]["Labels"][labels.FINGERPRINT] == job.fingerprint
        assert result_.digest is not None
        # The manifest carries the labels as annotations, and OCI's base annotations always
        # (buildah's own would name an earlier stage): here the labels' base, written by us.
        image_labels = config_blob["config"]["Labels"]
        assert pushed["annotations"] == {
            "org.opencontainers.image.base.name": "",
            "org.opencontainers.image.base.digest": "",
            **image_labels,
        }
        assert "org.opencontainers.image.base.name" not in image_labels  # where: never said
        assert image_labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    # Every build is cut off the network (chroot isolation: in an empty namespace, as root),
    # takes one timestamp and nothing from the layer cache (keyed on neither): per pair, the
    # compile's inputs, the compile, the assembly.
    builds = [c for c in runner.calls if "build" in c and "--file" in c]
    stages = [c[c.index("--target") + 1] if "--target" in c else "" for c in builds]
    assert sorted(stages) == sorted(["compile-inputs", "compiled", ""] * 2)
    for argv in builds:
        assert argv[:3] == ["unshare", "--net", "--"] or "--network" in argv
        assert "host" not in argv and "--no-cache" in argv
        assert argv[argv.index("--timestamp") + 1] == "0"


def test_a_failed_pull_stays_in_its_own_target(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)
    failing = next(
        j
        for j in build_service.resolve_and_plan(
            Project(ROOT, cache_dir=tmp_path / "c0"), cfg, cfg.targets, load_tests=False
        ).jobs
        if j.target.kernel == KERNELS[0]
    )
    assert failing.inputs is not None
    runner.failing_pulls.add(failing.inputs.toolkit.pinned)
    result = run(runner, cfg, tmp_path)
    first, second = result.results
    assert first.status is JobStatus.FAILED and "manifest unknown" in first.detail
    assert first.failure is not None and first.failure.step == "pull"
    assert second.status is JobStatus.OK
    assert result.exit_code == errors.TARGET_FAILED
    assert pushes(runner) == [f"docker://{cfg.targets[1].image}"]


def test_a_failed_check_never_pushes(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    runner.vermagic[KERNELS[1]] = f"{KERNELS[0]} SMP preempt mod_unload"
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    assert result.results[0].status is JobStatus.OK
    assert result.results[1].status is JobStatus.FAILED
    assert f"vermagic names kernel '{KERNELS[0]}'" in result.results[1].detail
    assert pushes(runner) == [f"docker://{cfg.targets[0].image}"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"depends": "ib_uverbs"}, "depends on ib_uverbs, which is neither in the image nor a"),
        ({"depends": "crc32c"}, "depends on crc32c, which {release} has built in"),
        (
            {"imports": ["0x00000001\tib_register_client"]},
            "disagrees about the version of ib_register_client (e.g. ib_register_client: "
            f"0x00000001 here, 0x{IB_REGISTER_CRC:08x} in {{release}}'s ",
        ),
        ({"imports": ["0x00000001\tib_gone"]}, "needs ib_gone, exported by neither the image"),
    ],
)
def test_a_module_that_would_not_resolve_on_its_kernel_is_never_pushed(
    fake: FakeRegistry, tmp_path: Path, change: dict[str, object], why: str
) -> None:
    """The checks read each toolkit's modules.dep and Module.symvers: with the kernel's own
    answers (ib_core a module, crc32c built in, ib_register_client's CRC) every image passes
    (test_every_target_is_built_checked_pushed_and_verified); any dependency or symbol version
    its kernel does not have fails the image before its push."""
    runner = FakePodman(fake)
    for name, value in change.items():
        setattr(runner, name, value)
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    for target, outcome in zip(cfg.targets, result.results, strict=True):
        assert outcome.status is JobStatus.FAILED
        assert why.format(release=target.kernel) in outcome.detail, outcome.detail
    assert pushes(runner) == []


def test_a_failed_load_test_is_never_pushed(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    runner.guest = [
        f"{MARK} booted {{release}}",
        f"{MARK} FAIL modprobe -d /opt habanalabs failed: Invalid argument",
        "[    2.1] habanalabs: disagrees about version of symbol pci_enable_device",
    ]
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path, load_test=True)
    assert len(runner.commands("qemu-system-x86_64")) == 2  # each image was booted
    for outcome in result.results:
        assert outcome.status is JobStatus.FAILED
        assert "modprobe -d /opt habanalabs failed" in outcome.detail, outcome.detail
    assert pushes(runner) == []


def test_a_passing_load_test_is_pushed_and_labelled(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path, load_test=True)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    assert len(pushes(runner)) == 2
    built = list(runner.labels.values())
    assert len(built) == 2
    assert {labels_[labels.PREFIX + "load-tested"] for labels_ in built} == {"plain"}
    assert {r.load_test_boot for r in result.results} == {"plain"}


def test_no_push_builds_and_checks_only(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    result = run(runner, library(fake, tmp_path), tmp_path, push=False)
    assert all(r.status is JobStatus.OK and "not pushed" in r.detail for r in result.results)
    assert pushes(runner) == [] and len(runner.commands("podman", "tag")) == 2


def test_an_interrupt_stops_every_child_and_pushes_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    runner = FakePodman(fake)
    runner.block_builds.set()
    cfg = library(fake, tmp_path)

    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_building() -> None:
        runner.building.wait(10)
        # To the main thread, as a terminal's Ctrl-C reaches it (raise_signal would signal this
        # thread, and the main thread would see it only once a build returned).
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_once_building, daemon=True).start()
    # Ctrl-C as a terminal delivers it, even when this test runs in a background job that
    # inherited SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted) as info:
            run(runner, cfg, tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert runner.terminated.is_set()  # every child was told to stop
    assert runner.waited_out == []  # ... while it ran, not once it had given up
    assert pushes(runner) == []
    # A build that failed because it was stopped says nothing of its inputs: no failure record.
    assert [key for key in fake.manifests if ":failed-" in key] == []
    stopped = [r.status for r in info.value.results if isinstance(r, JobResult)]
    assert stopped == [JobStatus.INTERRUPTED] * 2
    assert info.value.report is not None and info.value.report.is_file()


def test_inputs_are_resolved_once_per_distinct_reference(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    planned = build_service.resolve_and_plan(project, cfg, cfg.targets)
    base_gets = [p for m, p, _ in fake.log if m == "GET" and p == "/v2/base/debian/manifests/12"]
    assert len(base_gets) == 1  # two targets share the base: asked once
    toolkit_gets = [p for m, p, _ in fake.log if m == "GET" and "/v2/dtk/manifests/" in p]
    by_tag = {p for p in toolkit_gets if "sha256:" not in p}
    assert by_tag == {f"/v2/dtk/manifests/{k}" for k in KERNELS}
    # The kernel's module index is read once per toolkit, by its digest.
    by_digest = [p for p in toolkit_gets if "sha256:" in p]
    assert len(by_digest) == len(set(by_digest)) == len(KERNELS)
    assert planned.packages.downloads == 1  # one package URL for both targets


def test_a_run_says_what_failed_in_a_typed_record_and_its_exit_code(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """A failed check is a definite failure of its target: exit 3, the step and the image in
    the record, and the same record in report.json."""
    runner = FakePodman(fake)
    runner.vermagic[KERNELS[1]] = f"{KERNELS[0]} SMP preempt mod_unload"
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    ok, failed = result.results
    assert ok.failure is None
    assert failed.failure is not None
    assert (failed.failure.step, failed.failure.subject) == ("check", cfg.targets[1].image)
    assert failed.failure.transient is False
    assert result.exit_code == errors.TARGET_FAILED
    assert result.report is not None
    report = json.loads(result.report.read_text())
    assert report[1]["failure"] == {
        "step": "check",
        "why": failed.failure.why,
        "subject": cfg.targets[1].image,
        "transient": False,
        "origin": errors.INPUTS,
    }
    assert report[0]["failure"] is None


def test_a_registry_that_cannot_answer_is_exit_4_and_builds_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """The library's own repository answers 503: its state is unknown, so nothing is built or
    pushed, and the exit code tells a script to retry rather than to look at a build."""
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)

    def unavailable(path: str) -> tuple[int, dict[str, str], bytes] | None:
        return (503, {}, b"") if path.startswith("/v2/library/driver/") else None

    fake.hook = unavailable
    result = run(runner, cfg, tmp_path)
    assert all(r.failure is not None and r.failure.transient for r in result.results)
    assert {r.failure.step for r in result.results if r.failure} == {"registry state"}
    assert result.exit_code == errors.UNKNOWN_STATE
    assert pushes(runner) == []


def test_a_failed_result_always_carries_its_failure() -> None:
    """The exit code is computed from failures: a failed result without one is refused."""
    with pytest.raises(ValueError, match="status failed with failure None"):
        JobResult("t", Action.BUILD, JobStatus.FAILED, "broke")
    with pytest.raises(ValueError, match="status ok with failure"):
        JobResult("t", Action.BUILD, JobStatus.OK, "ok", failure=errors.Failure("build", "x"))


@pytest.mark.parametrize(
    ("transient", "expected"),
    [((), errors.OK), ((True,), 4), ((False,), 3), ((True, False), 3), ((True, True), 4)],
)
def test_a_definite_failure_outranks_an_unknown(transient: tuple[bool, ...], expected: int) -> None:
    failures = [errors.Failure("build", "why", "x", t) for t in transient]
    assert errors.exit_code_for([None, *failures]) == expected


def test_a_forced_rebuild_takes_the_compiled_files_from_the_cache(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    first = FakePodman(fake)
    cold = run(first, cfg, tmp_path)
    assert sorted(first.compiles) == sorted(KERNELS)
    assert [r.compiled.cache for r in cold.results if r.compiled] == ["miss", "miss"]
    # --force: every pair assembled, checked and pushed again, nothing compiled.
    second = FakePodman(fake)
    warm = run(second, cfg, tmp_path, force=True)
    assert [r.status for r in warm.results] == [JobStatus.OK, JobStatus.OK]
    assert second.compiles == [] and len(pushes(second)) == 2
    # What each toolkit gives the compile was digested once, in the first run.
    digested = [c for c in (*first.calls, *second.calls) if "compile-inputs" in c]
    assert len(digested) == len(KERNELS)
    compiled = [r.compiled for r in warm.results]
    assert [c.cache if c else None for c in compiled] == ["hit", "hit"]
    assert all(c and c.inputs["kernel release"] in KERNELS for c in compiled)
    assert warm.report is not None
    report = json.loads(warm.report.read_text())
    assert [entry["compiled"]["cache"] for entry in report] == ["hit", "hit"]
    assert read_report(warm.report) == list(warm.results)
    # --no-compile-cache: compiled afresh, the entry refreshed.
    third = FakePodman(fake)
    fresh = run(third, cfg, tmp_path, force=True, compile_cache=False)
    assert sorted(third.compiles) == sorted(KERNELS)
    assert [r.compiled.cache for r in fresh.results if r.compiled] == ["refreshed"] * 2
    log = Path(fresh.results[0].log or "").read_text()
    assert "compile key " in log and "driver package: " in log


def test_the_compile_cache_lives_where_habana_compile_cache_dir_says(
    fake: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-compile-cache"
    monkeypatch.setenv("HABANA_COMPILE_CACHE_DIR", str(shared))
    cfg = library(fake, tmp_path)
    run(FakePodman(fake), cfg, tmp_path)
    assert len(list((shared / "entries").iterdir())) == len(KERNELS)
    assert not (tmp_path / "cache" / "compile").exists()
    # Another checkout (another cache directory) with the same variable compiles nothing.
    other = FakePodman(fake)
    project = Project(ROOT, cache_dir=tmp_path / "other-cache")
    planned = build_service.resolve_and_plan(project, cfg, cfg.targets, force=True)
    build_service.execute(
        project,
        cfg,
        planned,
        Podman(other, BuildIsolation(other, env={"HABANA_ISOLATION": "chroot"})),
        PlainReporter(Console(file=io.StringIO())),
        build_service.BuildOptions(load_test=False),
    )
    assert other.compiles == [] and len(pushes(other)) == len(KERNELS)


def test_the_compile_cache_keeps_to_its_configured_size(fake: FakeRegistry, tmp_path: Path) -> None:
    """[cache] max_size read from the versions file by a real run: with 0, each store evicts
    every other entry, and every build still gets its files (a copy checked on read)."""
    cfg = library(fake, tmp_path, extra='[cache]\nmax_size = "0"\n')
    assert cfg.cache.max_size == 0
    runner = FakePodman(fake)
    result = run(runner, cfg, tmp_path)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    entries = list((tmp_path / "cache" / "compile" / "entries").iterdir())
    assert len(entries) == 1 and sorted(runner.compiles) == sorted(KERNELS)
