"""Execution of a plan: pull inputs once, build in parallel, check, push, verify.

A target's failure is recorded in its result and never stops or touches another target; nothing
that failed a check is pushed, and a tag only moves when the registry accepts the manifest.
"""

from __future__ import annotations

import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from habana_tasks.build import evidence, failure_records, labels, publish
from habana_tasks.build.assembly import ImageOptions, build_image
from habana_tasks.build.compile import CompileRecord, CompileSettings
from habana_tasks.build.failure_records import NOT_RECORDED, memorable
from habana_tasks.build.plan import Action, BuildJob
from habana_tasks.build.reporter import Reporter
from habana_tasks.build.results import JobResult, JobStatus, write_report
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import (
    HOST,
    CheckError,
    CommandError,
    Failure,
    HabanaError,
    Interrupted,
)
from habana_tasks.core.process import LineSink, in_parallel, interruption
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.trust.signer import ImageSigner
from habana_tasks.verification import image_checks, load_testing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.secure_boot import SecureBootSetup, boot_name
from habana_tasks.verification.worker import WorkerTools


@dataclass(frozen=True)
class RunOptions:
    dockerfile: Path
    work_dir: Path
    logs_dir: Path
    kernels_dir: Path
    jobs: int = 1
    push: bool = True
    load_test: bool = True
    load_test_timeout: float = load_testing.DEFAULT_TIMEOUT
    # The load test boots as a Secure Boot node when set (a signing library), else plainly.
    secure_boot: SecureBootSetup | None = None
    # Files, history and `created` of every image (reproducible: see labels.source_date_epoch).
    source_date_epoch: int = 0
    compiling: CompileSettings = field(default_factory=CompileSettings)  # None: compile afresh
    # Signs each image by digest after its push, before its tag moves ([cosign]).
    signer: ImageSigner | None = None

    @property
    def image(self) -> ImageOptions:
        # Only an image that passes the load test is ever published, so a published image
        # whose load-tested label names a boot was booted that way with its driver loaded.
        claim = boot_name(self.secure_boot) if self.load_test else "false"
        return ImageOptions(self.dockerfile, self.source_date_epoch, claim, self.compiling)


@dataclass
class _Progress:
    """How far one job got: its current step (a failure's), what it compiled and tested."""

    step: str = "build"
    compiled: CompileRecord | None = None
    tested: load_testing.LoadTestResult | None = None


class Pipeline:
    def __init__(
        self,
        config: Config,
        podman: Podman,
        registry: RegistryClient,
        reporter: Reporter,
        options: RunOptions,
    ) -> None:
        self.config = config
        self.podman = podman
        self.registry = registry
        self.reporter = reporter
        self.options = options
        self.kernels = KernelModuleStore(podman, options.kernels_dir)
        self.workers = WorkerTools(podman, options.dockerfile, options.kernels_dir)

    def execute(self, jobs: Sequence[BuildJob]) -> list[JobResult]:
        results: dict[str, JobResult] = {}
        for job in jobs:
            if job.action is Action.SKIP:
                results[job.target.tag] = JobResult(
                    job.target.tag,
                    Action.SKIP,
                    JobStatus.SKIPPED,
                    job.reason,
                    job.remote_digest,
                    load_tested=job.load_tested,
                    load_test_boot=job.load_test_boot,
                )
            elif job.action is Action.HOLD:
                results[job.target.tag] = JobResult(
                    job.target.tag, Action.HOLD, JobStatus.HELD, job.reason
                )
            elif job.action is Action.FAIL:
                host = self.options.push and job.failure is not None and job.failure.origin == HOST
                reason = job.reason + (NOT_RECORDED if host else "")
                results[job.target.tag] = JobResult(
                    job.target.tag, Action.FAIL, JobStatus.FAILED, reason, failure=job.failure
                )
        to_build = [job for job in jobs if job.action in (Action.BUILD, Action.SIGN)]
        if to_build:
            self.options.logs_dir.mkdir(parents=True, exist_ok=True)
            self.reporter.start([job.target.tag for job in to_build])
            try:
                pull_failures = self._pull_inputs([j for j in to_build if j.action is Action.BUILD])
                runnable = []
                for job in to_build:
                    if failure := pull_failures.get(job.target.tag):
                        results[job.target.tag] = JobResult(
                            job.target.tag,
                            Action.BUILD,
                            JobStatus.FAILED,
                            f"pull {failure}",
                            failure=failure,
                        )
                        self.reporter.finish(results[job.target.tag])
                    else:
                        runnable.append(job)
                self._run_parallel(runnable, results)
            except KeyboardInterrupt as exc:
                raise self._stopped(jobs, results, interruption(exc)) from None
            finally:
                self.reporter.close()
        ordered = [results[job.target.tag] for job in jobs]
        self._write_report(ordered)
        return ordered

    def _pull_inputs(self, jobs: Sequence[BuildJob]) -> dict[str, Failure]:
        """Pull every FROM image by digest, one at a time: parallel pulls race in shared storage."""
        needed: dict[str, list[str]] = {}
        for job in jobs:
            assert job.inputs is not None
            bases = [job.inputs.base.pinned] if job.inputs.base else []
            for image in (job.inputs.toolkit.pinned, *bases):
                needed.setdefault(image, []).append(job.target.tag)
        failures: dict[str, Failure] = {}
        for image, tags in needed.items():
            for tag in tags:
                self.reporter.stage(tag, f"pull {image.rsplit('/', 1)[-1][:40]}")
            try:
                self.podman.ensure(image, self.config.tls_verify(image))
            except HabanaError as exc:
                for tag in tags:
                    failures.setdefault(tag, Failure.of("pull", exc, image))
        return failures

    def _run_parallel(self, jobs: Sequence[BuildJob], results: dict[str, JobResult]) -> None:
        """Run the jobs; each result lands in `results` as soon as the caller has it."""

        def landed(result: JobResult) -> None:
            results[result.tag] = result

        in_parallel(self._run_job, jobs, self.options.jobs, self.podman.runner, landed)

    def _stopped(
        self, jobs: Sequence[BuildJob], results: dict[str, JobResult], error: type[Interrupted]
    ) -> Interrupted:
        """Every child stopped; targets that had not finished are reported as stopped."""
        self.podman.runner.terminate_all()
        status = JobStatus(error.word)
        ordered = [
            results.get(job.target.tag)
            or JobResult(job.target.tag, job.action, status, "stopped before it ended")
            for job in jobs
        ]
        report = self._write_report(ordered)
        return error(
            f"{error.word}: every build, load test and push was stopped; no tag was moved",
            ordered,
            report,
        )

    def _run_job(self, job: BuildJob) -> JobResult:
        target = job.target
        started = time.monotonic()
        log_path = self.options.logs_dir / f"{target.tag}.log"
        work = self.options.work_dir / target.tag
        with log_path.open("w", encoding="utf-8") as log:
            # Every log line carries the seconds since the job started: where the time goes.
            def sink(line: str) -> None:
                log.write(f"[{time.monotonic() - started:7.1f}] {line}\n")
                self.reporter.line(target.tag, line)

            progress = _Progress()

            def stage(name: str) -> None:
                progress.step = name
                log.write(f"[{time.monotonic() - started:7.1f}] ==> {name}\n")
                log.flush()
                self.reporter.stage(target.tag, name)

            failure: Failure | None = None
            stopped = False
            try:
                if job.action is Action.SIGN:
                    detail, digest = self._sign(job, work, stage, sink)
                else:
                    detail, digest = self._build_check_publish(job, work, stage, sink, progress)
                status = JobStatus.OK
            except HabanaError as exc:
                detail, digest, status = str(exc), None, JobStatus.FAILED
                failure = Failure.of(progress.step, exc, target.image)
                # A command stopped by a signal (an interrupt, a runner shutting down) failed
                # for a reason of the moment, not of its inputs.
                stopped = isinstance(exc, CommandError) and exc.returncode < 0
                log.write(f"FAILED: {exc}\n" + (f"{exc.details}\n" if exc.details else ""))
            except OSError as exc:  # the host's files: a full disk, a permission, a quota
                detail, digest, status = f"the host failed: {exc}", None, JobStatus.FAILED
                failure = Failure(progress.step, detail, target.image, origin=HOST)
                log.write(traceback.format_exc())
            except Exception as exc:  # a bug in one target must not take the others down
                detail, digest, status = f"internal error: {exc!r}", None, JobStatus.FAILED
                failure = Failure(progress.step, detail, target.image)
                log.write(traceback.format_exc())
            finally:
                shutil.rmtree(work, ignore_errors=True)
            remembered = self.options.push and job.action is Action.BUILD
            if remembered and not (stopped or self.podman.runner.stopping):
                self._remember(job, failure, log)
                if failure is not None and not memorable(failure):
                    detail += NOT_RECORDED
        tested = progress.tested
        result = JobResult(
            target.tag,
            job.action,
            status,
            detail,
            digest,
            time.monotonic() - started,
            str(log_path),
            load_tested=tested is not None and tested.passed,
            load_test_kernel=tested.kernel if tested else None,
            load_test_boot=tested.boot if tested else None,
            load_test_seconds=round(tested.seconds, 1) if tested else None,
            failure=failure,
            compiled=progress.compiled,
        )
        self.reporter.finish(result)
        return result

    def _build_check_publish(
        self,
        job: BuildJob,
        work: Path,
        stage: Callable[[str], None],
        sink: LineSink,
        progress: _Progress,
    ) -> tuple[str, str | None]:
        target, inputs = job.target, job.inputs
        assert inputs is not None and job.fingerprint is not None
        started = datetime.now(UTC)
        stage("build")
        built = build_image(self.podman, self.config, job, work, self.options.image, sink)
        image_id, progress.compiled = built.image_id, built.compiled
        stage("check")
        kernel = self.kernels.load(inputs.toolkit.pinned, target.kernel)
        rootfs = image_checks.check_image(
            self.podman,
            image_id,
            target,
            kernel,
            work / "check",
            inputs.firmware is not None,
            sink,
            signer=inputs.signer,
        )
        if self.options.load_test:
            stage("load test")
            result = load_testing.run_load_test(
                self.podman,
                self.kernels,
                self.workers,
                rootfs,
                inputs.toolkit.pinned,
                target,
                work / "load-test",
                timeout=self.options.load_test_timeout,
                on_line=sink,
                secure_boot=self.options.secure_boot,
                removes=inputs.in_tree_replaced,
            )
            progress.tested = result
            if not result.passed:
                raise CheckError(
                    f"load test in {target.kernel} failed: {result.reason}"
                    + "".join(f"\n    {line}" for line in result.evidence)
                )
        # Only a checked image gets the final name, locally and remotely.
        self.podman.tag(image_id, target.image)
        if not self.options.push:
            return f"built and checked, not pushed ({job.reason})", None
        signer, found = self.options.signer, None
        if signer is not None:
            stage("evidence")
            found = evidence.gather(
                self.podman.runner, self.config, target, inputs, rootfs, work / "evidence",
                self.options.logs_dir.name, started, built.owners,
            )  # fmt: skip
        stage("push")

        def sign(by_digest: str) -> None:
            assert signer is not None and found is not None
            stage("sign")
            publish.sign_and_attest(
                self.registry, signer, target, by_digest, found, work / "trust", sink
            )

        digest = publish.publish(
            self.podman,
            self.registry,
            target,
            image_id,
            work,
            self.config.tls_verify(target.image),
            sink,
            attach=sign if signer is not None else None,
        )
        stage("verify")
        verify_pushed(self.registry, target, digest, job.fingerprint)
        return f"pushed ({job.reason})", digest

    def _sign(
        self, job: BuildJob, work: Path, stage: Callable[[str], None], sink: LineSink
    ) -> tuple[str, str | None]:
        """An up-to-date image the library's key has not signed: signed where it is."""
        if not self.options.push or self.options.signer is None:
            return f"not signed, not pushing ({job.reason})", job.remote_digest
        digest = publish.sign_published(
            self.podman, self.registry, self.config, self.options.signer, job, work,
            self.options.logs_dir.name, stage, sink,
        )  # fmt: skip
        return f"signed ({job.reason})", digest

    def _remember(self, job: BuildJob, failure: Failure | None, log: TextIO) -> None:
        """The pair's failure memory after its run; a registry that refuses the update is noted
        in the log: the target's own outcome stands."""
        assert job.fingerprint is not None
        try:
            if said := failure_records.update(
                self.registry,
                self.config.repository,
                job.target.tag,
                job.fingerprint,
                job.record,
                failure,
            ):
                log.write(said + "\n")
        except HabanaError as exc:
            log.write(f"failure record of {job.target.tag} not updated: {exc}\n")
            self.reporter.message(f"{job.target.tag}: failure record not updated: {exc}")

    def _write_report(self, results: Sequence[JobResult]) -> Path:
        return write_report(self.options.logs_dir / "report.json", results)


def run_stamp() -> str:
    """A run's folder name: sortable by time, unique across runs in the same second."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def verify_pushed(
    registry: RegistryClient, target: BuildTarget, digest: str, fingerprint: str
) -> None:
    """The registry must now serve exactly what was pushed, with the expected fingerprint."""
    remote = registry.inspect(target.image, labels.FINGERPRINT)
    if remote.existence is not Existence.PRESENT:
        raise HabanaError(f"{target.image}: not readable after push ({remote.error or 'absent'})")
    if remote.digest != digest:
        raise HabanaError(
            f"{target.image}: pushed {digest} but the registry serves {remote.digest}"
        )
    if remote.labels.get(labels.FINGERPRINT) != fingerprint:
        raise HabanaError(f"{target.image}: fingerprint label differs after push")
