"""The published images proven again: load-tested in their exact kernels (`invoke load-test`)
and rebuilt from their inputs to compare digests (`invoke verify-rebuild`). One result and one
log per image, report.json per run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TextIO, TypeVar

from habana_tasks.build import labels, rebuild
from habana_tasks.build.driver_package import PackageCache
from habana_tasks.build.plan import Action
from habana_tasks.build.rebuild import RebuildResult
from habana_tasks.build.results import write_report
from habana_tasks.build.service import RunFolders, per_target, resolve_and_plan, secure_boot_node
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import Failure, UsageError, exit_code_for
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.verification import signing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.load_testing import DEFAULT_TIMEOUT, LoadTestResult, retest_image
from habana_tasks.verification.worker import WorkerTools


class Checked(Protocol):
    @property
    def failure(self) -> Failure | None: ...


C = TypeVar("C", bound=Checked)


@dataclass(frozen=True)
class ReportedRun(Generic[C]):
    """What `load-test` or `verify-rebuild` did: one result per image, and where report.json
    is; the exit code from the results' failures."""

    results: tuple[C, ...]
    report: Path

    @property
    def exit_code(self) -> int:
        return exit_code_for(r.failure for r in self.results)


LoadTestRun = ReportedRun[LoadTestResult]
RebuildRun = ReportedRun[RebuildResult]


def verify_rebuilds(
    project: Project, config: Config, targets: Sequence[BuildTarget], podman: Podman
) -> RebuildRun:
    """Rebuild each target's published image from its inputs and compare (nothing pushed);
    one log per image and report.json under .cache/logs/verify-rebuild-<stamp>."""
    registry = RegistryClient(config.insecure_registries)
    packages = PackageCache(project.cache / "downloads")
    signer = signing.load_signer(config.signing) if config.signing else None
    folders = RunFolders.new(project, "verify-rebuild-")

    def one(target: BuildTarget, work: Path, log: TextIO) -> RebuildResult:
        def sink(line: str) -> None:
            log.write(line + "\n")

        result = rebuild.verify_rebuild(
            config,
            target,
            podman=podman,
            registry=registry,
            packages=packages,
            dockerfile=project.dockerfile,
            work=work,
            signer=signer,
            on_line=sink,
        )
        sink(str(result.failure) if result.failure else f"reproduced: {result.rebuilt}")
        return result

    results = per_target(folders, targets, one)
    return RebuildRun(tuple(results), write_report(folders.report, results))


def not_published(
    project: Project, config: Config, targets: Sequence[BuildTarget]
) -> dict[str, str]:
    """The targets whose image is not in the library, each with the reason `status` gives
    (held after a failure with the same inputs, or not built yet); the rest are absent."""
    planned = resolve_and_plan(project, config, targets)
    reasons = {}
    for job in planned.jobs:
        remote = planned.remote[job.target.tag]
        if remote.existence is Existence.ABSENT:
            first = job.reason.splitlines()[0]
            why = {Action.HOLD: f"held: {first}", Action.FAIL: f"not built: {first}"}.get(
                job.action, "missing: not built yet"
            )
            reasons[job.target.tag] = f"not in the library: {why}"
    return reasons


def load_test_images(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    *,
    podman: Podman,
    image: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    secure_boot_test: bool = False,
    jobs: int = 1,
) -> LoadTestRun:
    """Pull each target's published image (or `image`, for one target) and its toolkit, and
    load-test it in the exact kernel again, as `build` did; one log per image. With
    `secure_boot_test`, through a Secure Boot node's chain with the library's certificate
    enrolled as a machine-owner key."""
    if image and len(targets) != 1:
        raise UsageError("--image tests one image: name its --kernel (and --driver)")
    setup = None
    if secure_boot_test:
        if config.signing is None:
            raise UsageError(
                f"--secure-boot: {config.path} has no [signing]: expected the certificate the "
                "library signs with (it is enrolled as the node's machine-owner key)"
            )
        setup = secure_boot_node(project, config.signing)
    registry = RegistryClient(config.insecure_registries)
    store = KernelModuleStore(podman, project.kernels)
    workers = WorkerTools(podman, project.dockerfile, project.kernels)
    folders = RunFolders.new(project, "load-test-")
    unpublished = {} if image else not_published(project, config, targets)

    def one(target: BuildTarget, work: Path, log: TextIO) -> LoadTestResult:
        image_ref = image or target.image
        if reason := unpublished.get(target.tag):
            log.write(f"NOT TESTED: {reason}\n")
            refused = Failure("load test", reason, image_ref)
            return LoadTestResult(
                False, reason, "", 0.0, 0, image=image_ref, log=log.name, failure=refused
            )
        return retest_image(
            podman,
            store,
            registry,
            config,
            target,
            image_ref,
            work,
            log,
            workers,
            timeout,
            setup,
            removal_label=labels.IN_TREE_REPLACED,
        )

    results = per_target(folders, targets, one, jobs, podman.runner)
    return LoadTestRun(tuple(results), write_report(folders.report, results))
