"""A build run as a service: resolve every input once, plan, execute, and return what happened.

The command layer renders what this returns; tests, the example and the benchmark call it too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from habana_tasks.build import failure_records, kernel_config, kernel_index, labels, metadata
from habana_tasks.build.compile import CompileSettings
from habana_tasks.build.compile_cache import CompileCache
from habana_tasks.build.driver_package import PackageCache
from habana_tasks.build.pipeline import Pipeline, RunOptions, run_stamp
from habana_tasks.build.plan import (
    Action,
    BuildJob,
    plan,
    recalled,
    refused_by_node,
    replacing,
    unsigned,
)
from habana_tasks.build.reporter import Reporter
from habana_tasks.build.results import JobResult, JobStatus
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget, Config, SigningFiles
from habana_tasks.core import user_session
from habana_tasks.core.errors import HabanaError, exit_code_for
from habana_tasks.core.http_client import HTTPClient
from habana_tasks.core.process import ProcessRunner, in_parallel
from habana_tasks.engine.isolation import BuildIsolation, explicit_choice
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import RegistryClient, RemoteImage
from habana_tasks.trust import cosign, signature_check
from habana_tasks.trust import signer as image_signer
from habana_tasks.trust.signature_check import Attached
from habana_tasks.verification import refusal, secure_boot, signing
from habana_tasks.verification.secure_boot import PLAIN, SECURE_BOOT, SecureBootSetup

R = TypeVar("R")


@dataclass(frozen=True)
class BuildOptions:
    """How a build run goes: the flags of `build` and `build-all`."""

    jobs: int = 1
    force: bool = False  # rebuild even what is up to date (compiled files may come from the cache)
    dry_run: bool = False  # the plan only
    push: bool = True
    load_test: bool = True
    retry_failed: bool = False  # build pairs whose inputs failed before (failure_records)
    # A signing library's load test boots as a Secure Boot node does (False: a plain boot).
    secure_boot: bool = True
    # False (--no-compile-cache): compile afresh, and refresh the compile cache's entry.
    compile_cache: bool = True

    def boot(self, config: Config) -> str | None:
        """The boot the load test proves images with: None without a load test."""
        return load_test_boot(config, self.load_test, self.secure_boot)


def load_test_boot(config: Config, load_test: bool, secure_boot: bool) -> str | None:
    """A signing library's load test boots as a Secure Boot node (unless told not to); any
    other boots plainly; None without a load test."""
    if not load_test:
        return None
    return SECURE_BOOT if secure_boot and config.signing is not None else PLAIN


def secure_boot_node(project: Project, signing_files: SigningFiles) -> SecureBootSetup:
    """The Secure Boot node load tests boot: the library's certificate enrolled as its MOK."""
    signer = signing.load_signer(signing_files)
    return secure_boot.prepare(project.root, project.cache, signer.certificate_pem, signer.key_id)


@dataclass(frozen=True)
class PlannedRun:
    """Every input and registry state, resolved once; the plan made from them."""

    jobs: tuple[BuildJob, ...]
    remote: dict[str, RemoteImage]
    registry: RegistryClient
    packages: PackageCache
    seconds: float
    memory_problem: str | None = None  # the failure records could not be read

    @property
    def summary(self) -> str:
        held = sum(job.action is Action.HOLD for job in self.jobs)
        return (
            f"resolved {len(self.jobs)} target(s) in {self.seconds:.2f} s: "
            f"{self.registry.requests_sent} HTTP request(s), "
            f"{self.packages.downloads} package download(s), "
            f"{self.packages.revalidations} package check(s)"
            + (
                f"; {held} held: failed before with the same inputs (--retry-failed)"
                if held
                else ""
            )
            + (f"; {self.memory_problem}" if self.memory_problem else "")
        )


@dataclass(frozen=True)
class BuildRun:
    """What a run did: its plan, each target's result, and where report.json is."""

    planned: PlannedRun
    results: tuple[JobResult, ...]
    report: Path | None = None  # None for a dry run

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        return exit_code_for(r.failure for r in self.results)


def resolve_and_plan(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    *,
    force: bool = False,
    load_tests: bool = True,
    retry_failed: bool = False,
    secure_boot: bool = True,
    http: HTTPClient | None = None,
) -> PlannedRun:
    """Every input and registry state resolved once, concurrently; then the pure plan, and
    for the pairs it would build, their failure records (read only when some are pending).
    Defaults plan as a default build would: status, matrix and preflight agree with it."""
    http = http or HTTPClient()
    registry = RegistryClient(config.insecure_registries, http, blob_cache=project.cache / "blobs")
    packages = PackageCache(project.cache / "downloads", http)
    started = time.monotonic()
    # The certificate and key are checked before any request: a wrong pair stops here.
    signer = signing.load_signer(config.signing) if config.signing else None
    resolution = metadata.resolve(targets, registry, packages, project.dockerfile, signer=signer)
    proof = load_test_boot(config, load_tests, secure_boot)
    jobs = plan(
        targets,
        resolution.inputs,
        resolution.remote,
        force,
        require_load_test=load_tests,
        require_secure_boot=proof == SECURE_BOOT,
    )
    pending = [job.target.tag for job in jobs if job.action is Action.BUILD]
    memory = failure_records.recall(registry, config.repository, pending)
    # The tool's own digest (its code hashed) is asked for only when some record is there.
    tool = failure_records.tool_digest() if memory.records else ""
    jobs = tuple(
        recalled(job, memory.records.get(job.target.tag), tool, force or retry_failed)
        for job in jobs
    )
    jobs = kernels_own_modules(registry, project.cache, jobs)
    if proof == SECURE_BOOT:
        jobs = node_trust(registry, project.cache, jobs)
    if config.image_signing is not None:
        jobs = attached_trust(registry, cosign.public_key(config.image_signing.public_key), jobs)
    seconds = time.monotonic() - started
    return PlannedRun(jobs, resolution.remote, registry, packages, seconds, memory.problem)


def kernels_own_modules(
    registry: RegistryClient, cache: Path, jobs: tuple[BuildJob, ...]
) -> tuple[BuildJob, ...]:
    """The pending jobs in the light of what their kernel itself ships of the image's modules
    (its module index read from the toolkit, once per toolkit digest): the modules KMM must
    remove first, or a refusal where the kernel builds one in."""
    pending = [
        (job.target, job.inputs.toolkit.pinned)
        for job in jobs
        if job.action is Action.BUILD and job.inputs is not None
    ]
    indexes = kernel_index.kernel_indexes(registry, cache, pending)
    return tuple(
        replacing(job, indexes[job.target.tag]) if job.target.tag in indexes else job
        for job in jobs
    )  # a job not pending has no index read: left as planned


def node_trust(
    registry: RegistryClient, cache: Path, jobs: tuple[BuildJob, ...]
) -> tuple[BuildJob, ...]:
    """The pending jobs whose kernel would trust no machine-owner key, flagged before building
    (its configuration read from the toolkit, once per toolkit digest)."""
    pending = [
        (job.target, job.inputs.toolkit.pinned)
        for job in jobs
        if job.action is Action.BUILD and job.inputs is not None
    ]
    configs = kernel_config.kernel_configs(registry, cache, pending)

    def blockers(job: BuildJob) -> list[str]:
        text = configs.get(job.target.tag)
        return refusal.machine_key_blockers(text, job.target.node_kernel_args) if text else []

    return tuple(refused_by_node(job, blockers(job)) for job in jobs)


def make_podman(announce: Callable[[str], None], runner: ProcessRunner | None = None) -> Podman:
    """One podman per run: its build isolation is decided once and announced once. A mistyped
    isolation or SOURCE_DATE_EPOCH in the environment is refused here, before anything runs,
    and so is a rootless host podman cannot work on (exit 6, with the fix)."""
    explicit_choice(os.environ)
    labels.source_date_epoch(os.environ)
    user_session.check_host()
    for notice in user_session.untold_notices():
        announce(notice)
    runner = runner or ProcessRunner()
    return Podman(runner, BuildIsolation(runner, announce=announce))


DRY_RUN_STATUS = {Action.FAIL: JobStatus.FAILED, Action.HOLD: JobStatus.HELD}


def dry_run_results(planned: PlannedRun) -> tuple[JobResult, ...]:
    """What a dry run reports: the plan itself, a target that cannot be planned as failed."""
    return tuple(
        JobResult(
            job.target.tag,
            job.action,
            DRY_RUN_STATUS.get(job.action, JobStatus.PLANNED),
            job.reason,
            failure=job.failure,
        )
        for job in planned.jobs
    )


@dataclass(frozen=True)
class RunFolders:
    """Where one run keeps its scratch space (removed per target) and its logs and report.json
    (kept): .cache/work/<stamp> and .cache/logs/<stamp>, the stamp sortable and unique."""

    work: Path
    logs: Path

    @classmethod
    def new(cls, project: Project, prefix: str = "") -> RunFolders:
        stamp = prefix + run_stamp()
        return cls(project.cache / "work" / stamp, project.cache / "logs" / stamp)

    @property
    def report(self) -> Path:
        return self.logs / "report.json"


def build_reports(root: Path) -> list[Path]:
    """The build runs' report.json files under root: their folders are named by the bare stamp
    (load-test and verify-rebuild runs' by a prefixed one, and their reports differ)."""
    return [p for p in root.rglob("report.json") if p.parent.name[:1].isdigit()]


def per_target(
    folders: RunFolders,
    targets: Sequence[BuildTarget],
    run: Callable[[BuildTarget, Path, TextIO], R],
    jobs: int = 1,
    runner: ProcessRunner | None = None,
) -> list[R]:
    """`run` for each target, `jobs` at a time, each with a scratch folder (removed afterwards)
    and its own log in the run's logs folder; results in the targets' order. Interrupted, the
    runner's commands are stopped before the interrupt goes on (workers hold no signal)."""
    folders.logs.mkdir(parents=True, exist_ok=True)

    def one(target: BuildTarget) -> R:
        work = folders.work / target.tag
        with (folders.logs / f"{target.tag}.log").open("w", encoding="utf-8") as log:
            try:
                return run(target, work, log)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    if jobs <= 1 or len(targets) <= 1:
        return [one(target) for target in targets]
    return in_parallel(one, targets, jobs, runner)


def attached_trust(
    registry: RegistryClient, public_key_pem: str, jobs: tuple[BuildJob, ...]
) -> tuple[BuildJob, ...]:
    """The up-to-date images of a library that signs, each checked for what its key attached
    (concurrently): one lacking a signature or an attestation is to be signed."""

    def found(job: BuildJob) -> Attached | HabanaError:
        assert job.remote_digest is not None
        t = job.target
        try:
            return signature_check.attached(
                registry, t.repository, job.remote_digest, public_key_pem, labels.pair_identity(t)
            )
        except HabanaError as exc:
            return exc

    current = [job for job in jobs if job.action is Action.SKIP and job.remote_digest]
    with ThreadPoolExecutor(8) as pool:
        read = dict(zip((j.target.tag for j in current), pool.map(found, current), strict=True))
    return tuple(
        unsigned(job, read[job.target.tag]) if job.target.tag in read else job for job in jobs
    )


def compile_cache(project: Project, config: Config) -> CompileCache:
    """The compile cache under the cache directory, bounded by [cache] max_size."""
    return CompileCache(project.compile_cache, config.cache.max_size)


def execute(
    project: Project,
    config: Config,
    planned: PlannedRun,
    podman: Podman,
    reporter: Reporter,
    options: BuildOptions | None = None,
) -> BuildRun:
    """Build, check, load-test and push what the plan says; raises Interrupted (with every
    target's result) when stopped by a signal."""
    options = options or BuildOptions()
    setup = None
    if options.boot(config) == SECURE_BOOT:
        assert config.signing is not None
        setup = secure_boot_node(project, config.signing)
    # Before anything is built: a cosign that cannot sign with this key stops the run here.
    signer = (
        image_signer.prepare(config, podman.runner, project.root, os.environ)
        if options.push
        else None
    )
    folders = RunFolders.new(project)
    run_options = RunOptions(
        dockerfile=project.dockerfile,
        work_dir=folders.work,
        kernels_dir=project.kernels,
        logs_dir=folders.logs,
        jobs=options.jobs,
        push=options.push,
        load_test=options.load_test,
        source_date_epoch=labels.source_date_epoch(),
        secure_boot=setup,
        compiling=CompileSettings(
            compile_cache(project, config), refresh=not options.compile_cache
        ),
        signer=signer,
    )
    pipeline = Pipeline(config, podman, planned.registry, reporter, run_options)
    results = pipeline.execute(planned.jobs)
    return BuildRun(planned, tuple(results), folders.report)
