"""What each invoke task does; tasks.py only parses arguments and calls these."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from habana_tasks import config as config_module
from habana_tasks import labels, local_upstream, metadata
from habana_tasks import smoke as smoke_module
from habana_tasks.config import BuildTarget, Config
from habana_tasks.driver_package import PackageCache
from habana_tasks.errors import HabanaError, UsageError
from habana_tasks.http_client import HTTPClient
from habana_tasks.pipeline import Pipeline, RunOptions, run_stamp, tls_verify
from habana_tasks.plan import Action, BuildJob, plan
from habana_tasks.podman import Podman
from habana_tasks.process import ProcessRunner
from habana_tasks.registry import Existence, RegistryClient
from habana_tasks.reporter import JobResult, make_console, make_reporter, summary_table

EXAMPLE_VERSIONS = Path("examples/local/versions.toml")


@dataclass(frozen=True)
class Project:
    """Where the recipe lives (Dockerfile, versions.toml) and where it keeps its cache."""

    root: Path

    @property
    def cache(self) -> Path:
        return Path(os.environ.get("HABANA_CACHE_DIR", self.root / ".cache"))

    @property
    def dockerfile(self) -> Path:
        return self.root / "Dockerfile"

    def versions(self, given: str | None) -> Path:
        path = Path(given) if given else self.root / "versions.toml"
        return path if path.is_absolute() else (Path.cwd() / path)


def _plan_table(jobs: Sequence[BuildJob]) -> Table:
    table = Table(title="plan")
    for column in ("target", "image", "action", "reason"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        style = {"build": "yellow", "skip": "green", "fail": "red"}[job.action.value]
        table.add_row(
            job.target.tag,
            job.target.image,
            f"[{style}]{job.action.value}[/]",
            job.reason,
        )
    return table


def build(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    smoke: bool = True,
    console: Console | None = None,
) -> int:
    """Resolve, plan and (unless dry_run) build, check, load-test and push; the exit code."""
    console = console or make_console()
    config = config_module.load(project.versions(versions))
    targets = config.select(kernel, driver)
    results, _ = run_build(
        project, config, targets, jobs=jobs, force=force, dry_run=dry_run, push=push,
        console=console, smoke=smoke,
    )  # fmt: skip
    return 0 if all(r.ok for r in results) else 1


def run_build(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    *,
    jobs: int,
    force: bool,
    dry_run: bool,
    push: bool,
    console: Console,
    smoke: bool = True,
) -> tuple[list[JobResult], RegistryClient]:
    http = HTTPClient()
    registry = RegistryClient(config.insecure_registries, http)
    packages = PackageCache(project.cache / "downloads", http)
    started = time.monotonic()
    resolution = metadata.resolve(targets, registry, packages, project.dockerfile)
    planned = plan(targets, resolution.inputs, resolution.remote, force, require_load_test=smoke)
    console.print(_plan_table(planned))
    console.print(
        f"resolved {len(targets)} target(s) in {time.monotonic() - started:.2f} s: "
        f"{registry.requests_sent} HTTP request(s), {packages.downloads} package download(s)",
        highlight=False,
    )
    if dry_run:
        return [
            JobResult(j.target.tag, j.action.value, "failed" if j.action is Action.FAIL else "ok",
                      j.reason)
            for j in planned
        ], registry  # fmt: skip
    stamp = run_stamp()
    options = RunOptions(
        dockerfile=project.dockerfile,
        work_dir=project.cache / "work" / stamp,
        logs_dir=project.cache / "logs" / stamp,
        jobs=jobs,
        push=push,
        smoke=smoke,
    )
    runner = ProcessRunner()
    pipeline = Pipeline(config, Podman(runner), registry, make_reporter(console), options)
    results = pipeline.execute(planned)
    console.print(summary_table(results))
    console.print(f"report: {options.logs_dir / 'report.json'}", highlight=False)
    return results, registry


def library_table(config: Config, registry: RegistryClient) -> Table:
    """What the repository holds for every target: the library as a user would publish it."""
    table = Table(title=f"library: {config.repository}")
    for column in ("kernel", "driver", "image", "digest", "size", "load-tested", "created"):
        table.add_column(column, overflow="fold")
    for target in config.targets:
        remote = registry.inspect(target.image)
        if remote.existence is Existence.PRESENT:
            size = f"{(remote.size or 0) / 1e6:.1f} MB"
            created = remote.labels.get("org.opencontainers.image.created", "")
            tested = remote.labels.get(labels.LOAD_TESTED, "no label")
            table.add_row(target.kernel, target.driver, target.image, remote.digest or "", size,
                          tested, created)  # fmt: skip
        else:
            table.add_row(target.kernel, target.driver, target.image, remote.existence.value,
                          remote.error or "", "", "")  # fmt: skip
    return table


def upstream(project: Project) -> local_upstream.Upstream:
    return local_upstream.Upstream(local_upstream.default_root(project.root))


def upstream_up(
    project: Project, versions: str | None = None, console: Console | None = None
) -> None:
    """Stand up the local upstream with what the example versions file names."""
    console = console or make_console()
    config = config_module.load(project.versions(versions or str(project.root / EXAMPLE_VERSIONS)))
    started = time.monotonic()
    console.print("local upstream: registry, package server, base and toolkit images, RPMs")
    local_upstream.up(
        upstream(project),
        ProcessRunner(),
        kernels=[t.kernel for t in config.targets],
        drivers=[t.driver for t in config.targets],
    )
    console.print(f"local upstream ready in {time.monotonic() - started:.1f} s", highlight=False)


def upstream_down(project: Project, console: Console | None = None) -> None:
    console = console or make_console()
    stopped = local_upstream.stop(upstream(project))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def example(
    project: Project, jobs: int = 1, smoke: bool = True, console: Console | None = None
) -> int:
    """The example library end to end: local upstream, build-all, and the library table."""
    console = console or make_console()
    versions = str(project.root / EXAMPLE_VERSIONS)
    upstream_up(project, versions, console)
    config = config_module.load(project.versions(versions))
    results, registry = run_build(
        project, config, config.targets, jobs=jobs, force=False, dry_run=False, push=True,
        console=console, smoke=smoke,
    )  # fmt: skip
    console.print(library_table(config, registry))
    return 0 if all(r.ok for r in results) else 1


@dataclass(frozen=True)
class SmokeReport:
    """One image's load test, as the table and report.json show it."""

    image: str
    passed: bool
    reason: str
    log: str
    kernel: str | None = None
    seconds: float | None = None
    initramfs_bytes: int | None = None
    evidence: tuple[str, ...] = ()


def smoke(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    image: str | None = None,
    timeout: float = smoke_module.DEFAULT_TIMEOUT,
    console: Console | None = None,
) -> int:
    """Load-test published (or local) images in their exact kernels; returns the exit code."""
    console = console or make_console()
    config = config_module.load(project.versions(versions))
    targets = config.select(kernel, driver)
    if image and len(targets) != 1:
        raise UsageError("--image tests one image: name its --kernel (and --driver)")
    registry = RegistryClient(config.insecure_registries)
    podman = Podman(ProcessRunner())
    stamp = run_stamp()
    logs = project.cache / "logs" / f"smoke-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    reports = []
    for target in targets:
        ref = image or target.image
        work = project.cache / "work" / f"smoke-{stamp}" / target.tag
        log_path = logs / f"{target.tag}.log"
        with log_path.open("w", encoding="utf-8") as log:
            try:
                reports.append(_smoke_one(podman, registry, config, target, ref, work, log,
                                          timeout))  # fmt: skip
            except HabanaError as exc:
                log.write(f"FAILED: {exc}\n")
                reports.append(SmokeReport(ref, False, str(exc), str(log_path)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    table = Table(title="load tests")
    for column in ("image", "result", "kernel booted", "seconds", "initramfs MB", "reason"):
        table.add_column(column, overflow="fold")
    for r in reports:
        table.add_row(
            r.image,
            "[green]pass[/]" if r.passed else "[red]FAIL[/]",
            r.kernel or "",
            f"{r.seconds:.1f}" if r.seconds is not None else "",
            f"{r.initramfs_bytes / 1e6:.0f}" if r.initramfs_bytes else "",
            "\n".join([r.reason, *r.evidence]),
        )
    console.print(table)
    report = logs / "report.json"
    report.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    console.print(f"report: {report}", highlight=False)
    return 0 if all(r.passed for r in reports) else 1


def _smoke_one(
    podman: Podman,
    registry: RegistryClient,
    config: Config,
    target: BuildTarget,
    ref: str,
    work: Path,
    log: TextIO,
    timeout: float,
) -> SmokeReport:
    def sink(line: str) -> None:
        log.write(line + "\n")

    podman.ensure(ref, tls_verify(config, ref), sink)
    toolkit = registry.resolve(target.toolkit_image, target.arch).pinned
    podman.ensure(toolkit, tls_verify(config, toolkit), sink)
    work.mkdir(parents=True, exist_ok=True)
    podman.export_rootfs(ref, work / "rootfs.tar", sink)
    vmlinuz = smoke_module.extract_kernel(podman, toolkit, target.kernel, work / "vmlinuz")
    outcome = smoke_module.run_smoke(
        podman, work / "rootfs.tar", vmlinuz, target.kernel, target.modules, work,
        timeout=timeout, on_line=sink,
    )  # fmt: skip
    return SmokeReport(
        ref, outcome.passed, outcome.reason, log.name, outcome.kernel,
        round(outcome.seconds, 1), outcome.initramfs_bytes, outcome.evidence,
    )  # fmt: skip
