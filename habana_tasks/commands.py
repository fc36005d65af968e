"""What each invoke task does; tasks.py only parses arguments and calls these."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from habana_tasks import config as config_module
from habana_tasks import local_upstream, metadata
from habana_tasks.config import BuildTarget, Config
from habana_tasks.driver_package import PackageCache
from habana_tasks.http_client import HTTPClient
from habana_tasks.pipeline import Pipeline, RunOptions
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
    console: Console | None = None,
) -> int:
    """Resolve, plan and (unless dry_run) build, check and push; returns the exit code."""
    console = console or make_console()
    config = config_module.load(project.versions(versions))
    targets = config.select(kernel, driver)
    results, _ = run_build(
        project, config, targets, jobs=jobs, force=force, dry_run=dry_run, push=push,
        console=console,
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
) -> tuple[list[JobResult], RegistryClient]:
    http = HTTPClient()
    registry = RegistryClient(config.insecure_registries, http)
    packages = PackageCache(project.cache / "downloads", http)
    started = time.monotonic()
    resolution = metadata.resolve(targets, registry, packages, project.dockerfile)
    planned = plan(targets, resolution.inputs, resolution.remote, force)
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    options = RunOptions(
        dockerfile=project.dockerfile,
        work_dir=project.cache / "work" / stamp,
        logs_dir=project.cache / "logs" / stamp,
        jobs=jobs,
        push=push,
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
    for column in ("kernel", "driver", "image", "digest", "size", "created"):
        table.add_column(column, overflow="fold")
    for target in config.targets:
        remote = registry.inspect(target.image)
        if remote.existence is Existence.PRESENT:
            size = f"{(remote.size or 0) / 1e6:.1f} MB"
            created = remote.labels.get("org.opencontainers.image.created", "")
            table.add_row(target.kernel, target.driver, target.image, remote.digest or "", size,
                          created)  # fmt: skip
        else:
            table.add_row(target.kernel, target.driver, target.image, remote.existence.value,
                          remote.error or "", "")  # fmt: skip
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


def example(project: Project, jobs: int = 1, console: Console | None = None) -> int:
    """The example library end to end: local upstream, build-all, and the library table."""
    console = console or make_console()
    versions = str(project.root / EXAMPLE_VERSIONS)
    upstream_up(project, versions, console)
    config = config_module.load(project.versions(versions))
    results, registry = run_build(
        project, config, config.targets, jobs=jobs, force=False, dry_run=False, push=True,
        console=console,
    )  # fmt: skip
    console.print(library_table(config, registry))
    return 0 if all(r.ok for r in results) else 1
