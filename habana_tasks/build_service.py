"""A build run as a service: resolve every input once, plan, execute, and return what happened.

The command layer renders what this returns; tests, the example and the benchmark call it too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from habana_tasks import metadata, signing
from habana_tasks.config import BuildTarget, Config
from habana_tasks.driver_package import PackageCache
from habana_tasks.http_client import HTTPClient
from habana_tasks.isolation import BuildIsolation, explicit_choice
from habana_tasks.pipeline import Pipeline, RunOptions, run_stamp
from habana_tasks.plan import Action, BuildJob, plan
from habana_tasks.podman import Podman
from habana_tasks.process import ProcessRunner
from habana_tasks.project import Project
from habana_tasks.registry import RegistryClient, RemoteImage
from habana_tasks.reporter import JobResult, JobStatus, Reporter


@dataclass(frozen=True)
class PlannedRun:
    """Every input and registry state, resolved once; the plan made from them."""

    jobs: tuple[BuildJob, ...]
    remote: dict[str, RemoteImage]
    registry: RegistryClient
    packages: PackageCache
    seconds: float

    @property
    def summary(self) -> str:
        return (
            f"resolved {len(self.jobs)} target(s) in {self.seconds:.2f} s: "
            f"{self.registry.requests_sent} HTTP request(s), "
            f"{self.packages.downloads} package download(s), "
            f"{self.packages.revalidations} package check(s)"
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


def resolve_and_plan(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    *,
    force: bool = False,
    load_tests: bool = True,
    http: HTTPClient | None = None,
) -> PlannedRun:
    """Every input and registry state resolved once, concurrently; then the pure plan."""
    http = http or HTTPClient()
    registry = RegistryClient(config.insecure_registries, http, blob_cache=project.cache / "blobs")
    packages = PackageCache(project.cache / "downloads", http)
    started = time.monotonic()
    # The certificate and key are checked before any request: a wrong pair stops here.
    signer = signing.load_signer(config.signing) if config.signing else None
    resolution = metadata.resolve(targets, registry, packages, project.dockerfile, signer=signer)
    jobs = plan(targets, resolution.inputs, resolution.remote, force, require_load_test=load_tests)
    return PlannedRun(jobs, resolution.remote, registry, packages, time.monotonic() - started)


def make_podman(announce: Callable[[str], None], runner: ProcessRunner | None = None) -> Podman:
    """One podman per run: its build isolation is decided once and announced once. A mistyped
    isolation in the environment is refused here, before anything runs."""
    explicit_choice(os.environ)
    runner = runner or ProcessRunner()
    return Podman(runner, BuildIsolation(runner, announce=announce))


def dry_run_results(planned: PlannedRun) -> tuple[JobResult, ...]:
    """What a dry run reports: the plan itself, a target that cannot be planned as failed."""
    return tuple(
        JobResult(
            job.target.tag,
            job.action,
            JobStatus.FAILED if job.action is Action.FAIL else JobStatus.PLANNED,
            job.reason,
        )
        for job in planned.jobs
    )


def execute(
    project: Project,
    config: Config,
    planned: PlannedRun,
    *,
    podman: Podman,
    reporter: Reporter,
    jobs: int = 1,
    push: bool = True,
    load_test: bool = True,
) -> BuildRun:
    """Build, check, load-test and push what the plan says; raises Interrupted (with every
    target's result) when stopped by a signal."""
    stamp = run_stamp()
    options = RunOptions(
        dockerfile=project.dockerfile,
        work_dir=project.cache / "work" / stamp,
        kernels_dir=project.kernels,
        logs_dir=project.cache / "logs" / stamp,
        jobs=jobs,
        push=push,
        load_test=load_test,
    )
    pipeline = Pipeline(config, podman, planned.registry, reporter, options)
    results = pipeline.execute(planned.jobs)
    return BuildRun(planned, tuple(results), options.logs_dir / "report.json")
