"""What each invoke task does; tasks.py only parses arguments and calls these."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from habana_tasks import config as config_module
from habana_tasks import discover as discover_module
from habana_tasks import kmm, labels, local_upstream, metadata
from habana_tasks import prune as prune_module
from habana_tasks import smoke as smoke_module
from habana_tasks import status as status_module
from habana_tasks.auth import Credentials, find_credentials
from habana_tasks.config import BuildTarget, Config
from habana_tasks.driver_package import PackageCache
from habana_tasks.errors import HabanaError, Interrupted, UsageError
from habana_tasks.http_client import HTTPClient
from habana_tasks.image_reference import ImageReference
from habana_tasks.isolation import BuildIsolation, explicit_choice
from habana_tasks.pipeline import Pipeline, RunOptions, run_stamp, tls_verify
from habana_tasks.plan import Action, BuildJob, plan
from habana_tasks.podman import Podman
from habana_tasks.process import ProcessRunner
from habana_tasks.registry import Existence, RegistryClient, RemoteImage
from habana_tasks.reporter import (
    JobResult,
    add_text_row,
    make_console,
    make_reporter,
    summary_table,
)

EXAMPLE_VERSIONS = Path("examples/local/versions.toml")


@dataclass(frozen=True)
class Project:
    """Where the recipe lives (Dockerfile, versions.toml) and where it keeps its cache."""

    root: Path
    cache_dir: Path | None = None

    @property
    def cache(self) -> Path:
        """cache_dir, else $HABANA_CACHE_DIR, else .cache beside the recipe."""
        return self.cache_dir or Path(os.environ.get("HABANA_CACHE_DIR", self.root / ".cache"))

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
        add_text_row(
            table, job.target.tag, job.target.image, Text(job.action.value, style), job.reason
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


@dataclass(frozen=True)
class PlannedRun:
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
    resolution = metadata.resolve(targets, registry, packages, project.dockerfile)
    jobs = plan(targets, resolution.inputs, resolution.remote, force, require_load_test=load_tests)
    return PlannedRun(jobs, resolution.remote, registry, packages, time.monotonic() - started)


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
    podman: Podman | None = None,
) -> tuple[list[JobResult], RegistryClient]:
    explicit_choice(os.environ)  # a mistyped isolation is refused before anything runs
    planned_run = resolve_and_plan(project, config, targets, force=force, load_tests=smoke)
    planned, registry = planned_run.jobs, planned_run.registry
    console.print(_plan_table(planned))
    console.print(planned_run.summary, markup=False, highlight=False)
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
    reporter = make_reporter(console)
    podman = podman or _podman(reporter.message)
    pipeline = Pipeline(config, podman, registry, reporter, options)
    try:
        results = pipeline.execute(planned)
    except Interrupted as exc:
        console.print(summary_table([r for r in exc.results if isinstance(r, JobResult)]))
        console.print(f"report: {options.logs_dir / 'report.json'}", markup=False, highlight=False)
        raise
    console.print(summary_table(results))
    console.print(f"report: {options.logs_dir / 'report.json'}", markup=False, highlight=False)
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
            add_text_row(table, target.kernel, target.driver, target.image, remote.digest or "",
                         size, tested, created)  # fmt: skip
        else:
            add_text_row(table, target.kernel, target.driver, target.image,
                         remote.existence.value, remote.error or "", "", "")  # fmt: skip
    return table


def _podman(announce: Callable[[str], None]) -> Podman:
    """One podman per run: its build isolation is decided once and announced once."""
    explicit_choice(os.environ)  # a mistyped isolation is refused before anything runs
    runner = ProcessRunner()
    return Podman(runner, BuildIsolation(runner, announce=announce))


def _announcer(console: Console) -> Callable[[str], None]:
    return lambda text: console.print(text, markup=False, highlight=False)


def upstream(project: Project) -> local_upstream.Upstream:
    return local_upstream.Upstream(local_upstream.default_root(project.root))


def upstream_up(
    project: Project,
    versions: str | None = None,
    console: Console | None = None,
    podman: Podman | None = None,
) -> None:
    """Stand up the local upstream with what the example versions file names."""
    console = console or make_console()
    config = config_module.load(project.versions(versions or str(project.root / EXAMPLE_VERSIONS)))
    started = time.monotonic()
    console.print("local upstream: registry, package server, base and toolkit images, RPMs")
    local_upstream.up(
        upstream(project),
        podman or _podman(_announcer(console)),
        kernels=[t.kernel for t in config.targets],
        drivers=[t.driver for t in config.targets],
    )
    console.print(
        f"local upstream ready in {time.monotonic() - started:.1f} s", markup=False, highlight=False
    )


def upstream_down(project: Project, console: Console | None = None) -> None:
    console = console or make_console()
    stopped = local_upstream.stop(upstream(project))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}", markup=False)


def example(
    project: Project, jobs: int = 1, smoke: bool = True, console: Console | None = None
) -> int:
    """The example library end to end: local upstream, build-all, and the library table."""
    console = console or make_console()
    versions = str(project.root / EXAMPLE_VERSIONS)
    podman = _podman(_announcer(console))
    upstream_up(project, versions, console, podman)
    config = config_module.load(project.versions(versions))
    results, registry = run_build(
        project, config, config.targets, jobs=jobs, force=False, dry_run=False, push=True,
        console=console, smoke=smoke, podman=podman,
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
        add_text_row(
            table,
            r.image,
            Text("pass", "green") if r.passed else Text("FAIL", "red"),
            r.kernel or "",
            f"{r.seconds:.1f}" if r.seconds is not None else "",
            f"{r.initramfs_bytes / 1e6:.0f}" if r.initramfs_bytes else "",
            "\n".join([r.reason, *r.evidence]),
        )
    console.print(table)
    report = logs / "report.json"
    report.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    console.print(f"report: {report}", markup=False, highlight=False)
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
    outcome = smoke_module.load_test(
        podman, work / "rootfs.tar", toolkit, target.kernel, target.modules, work,
        timeout=timeout, on_line=sink,
    )  # fmt: skip
    return SmokeReport(
        ref, outcome.passed, outcome.reason, log.name, outcome.kernel,
        round(outcome.seconds, 1), outcome.initramfs_bytes, outcome.evidence,
    )  # fmt: skip


def status(
    project: Project,
    versions: str | None = None,
    *,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """Every pair: current, stale (why), missing or unknown; and tags no longer named."""
    console = console or make_console()
    config = config_module.load(project.versions(versions))
    run = resolve_and_plan(project, config, config.targets)
    items = status_module.statuses(run.jobs, run.remote)
    orphans: list[str] | None
    try:
        orphans = status_module.orphan_tags(
            run.registry.list_tags(config.repository), config.targets
        )
        orphan_note = ""
    except HabanaError as exc:
        orphans, orphan_note = None, f"cannot list tags: {exc}"
    if output_format == "json":
        errors = [orphan_note] if orphan_note else []
        console.print_json(status_module.to_json(items, orphans, errors))
    elif output_format == "markdown":
        console.print(status_module.to_markdown(items, config.repository), markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
    elif output_format == "table":
        table = Table(title=f"status: {config.repository}")
        for column in ("kernel", "driver", "state", "reason", "digest", "size", "load-tested",
                       "built"):  # fmt: skip
            table.add_column(column, overflow="fold")
        colours = {"current": "green", "stale": "yellow", "missing": "yellow", "unknown": "red"}
        for item in items:
            add_text_row(
                table, item.kernel, item.driver, Text(item.state.value, colours[item.state.value]),
                item.reason, (item.digest or "")[:19],
                f"{item.size / 1e6:.1f} MB" if item.size else "",
                "yes" if item.load_tested else "no", item.created or "",
            )  # fmt: skip
        console.print(table)
        if orphans:
            console.print(
                f"tags the matrix no longer names: {', '.join(orphans)}",
                markup=False,
                highlight=False,
            )
        if orphan_note:
            console.print(orphan_note, markup=False, highlight=False)
        console.print(run.summary, markup=False, highlight=False)
    else:
        raise UsageError(f"--format {output_format!r}: expected table, json or markdown")
    unknown = any(i.state is status_module.State.UNKNOWN for i in items)
    # A repository whose tags cannot be listed is a question unanswered, not an empty answer.
    return 1 if unknown or orphans is None else 0


def matrix(project: Project, versions: str | None = None, output_format: str = "github") -> str:
    """The pending pairs (missing or stale) for a CI fan-out; printed by the task."""
    if output_format != "github":
        raise UsageError(f"--format {output_format!r}: expected github")
    config = config_module.load(project.versions(versions))
    run = resolve_and_plan(project, config, config.targets)
    return status_module.github_matrix(status_module.statuses(run.jobs, run.remote))


def kmm_module(
    project: Project,
    driver: str,
    versions: str | None = None,
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
) -> str:
    """A KMM Module (YAML) mapping every kernel whose image the repository holds for driver."""
    config = config_module.load(project.versions(versions))
    targets = config.select(driver=driver)
    registry = RegistryClient(config.insecure_registries)
    with ThreadPoolExecutor(16) as pool:
        remote = list(pool.map(lambda t: registry.inspect(t.image), targets))
    unknown = [r for r in remote if r.existence is Existence.UNKNOWN]
    if unknown:
        raise HabanaError(f"{unknown[0].reference}: {unknown[0].error}")
    held = [t for t, r in zip(targets, remote, strict=True) if r.existence is Existence.PRESENT]
    if not held:
        raise HabanaError(f"{config.repository} holds no image for driver {driver}; build first")
    manifest = kmm.module_manifest(
        held, name=name, namespace=namespace, with_firmware=held[0].firmware_url is not None
    )
    return yaml.safe_dump(manifest, sort_keys=False)


def prune(
    project: Project,
    versions: str | None = None,
    *,
    older_than: int | None = None,
    apply: bool = False,
    console: Console | None = None,
) -> int:
    """List (and with apply, delete by digest) tags the matrix no longer names."""
    console = console or make_console()
    config = config_module.load(project.versions(versions))
    registry = RegistryClient(config.insecure_registries)
    repository = ImageReference.parse(config.repository)
    tags = registry.list_tags(config.repository)
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda tag: registry.inspect(f"{config.repository}:{tag}"), tags))
    info = {}
    for tag, remote in zip(tags, found, strict=True):
        if remote.existence is Existence.UNKNOWN or remote.digest is None:
            raise HabanaError(f"{config.repository}:{tag}: {remote.error or 'unreadable'}")
        created = remote.labels.get(labels.OCI + "created")
        info[tag] = prune_module.TagInfo(remote.digest, _parse_time(created))
    items = prune_module.prune_plan(
        info, config.named_tags, older_than_days=older_than, now=datetime.now(UTC)
    )
    table = Table(title=f"prune: {config.repository}" + ("" if apply else " (dry run: --apply)"))
    for column in ("tag", "digest", "reason", "result"):
        table.add_column(column, overflow="fold")
    failed = 0
    for item in items:
        result = "would delete"
        if apply:
            try:
                registry.delete_manifest(repository, item.digest)
                result = "deleted"
            except HabanaError as exc:
                result, failed = f"failed: {exc}", failed + 1
        add_text_row(table, item.tag, item.digest[:19], item.reason, result)
    console.print(table)
    console.print(f"{len(tags)} tag(s), {len(items)} to prune", markup=False, highlight=False)
    return 1 if failed else 0


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def discover(
    project: Project,
    versions: str | None = None,
    *,
    minors: Sequence[str] = (),
    arches: Sequence[str] = (),
    drivers: Sequence[str] = (),
    release_repository: str | None = None,
    authfile: str | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> int:
    """Add the kernels of the requested OpenShift releases to versions.toml (comments kept)."""
    console = console or make_console()
    path = project.versions(versions)
    config = config_module.load(path)
    settings = replace(
        config.discover,
        minors=tuple(minors) or config.discover.minors,
        arches=tuple(arches) or config.discover.arches,
        release_repository=release_repository or config.discover.release_repository,
    )
    if not settings.minors:
        raise UsageError("no OpenShift minors to look at: pass --minor 4.14 or set discover.minors")
    chosen = tuple(drivers) or settings.drivers or (config.targets[-1:][0].driver,)

    def credentials(registry: str, repository: str) -> Credentials | None:
        env = {**os.environ, "REGISTRY_AUTH_FILE": authfile} if authfile else None
        return find_credentials(registry, repository, env)

    registry = RegistryClient(config.insecure_registries, credentials=credentials)
    started = time.monotonic()
    found = discover_module.discover(registry, settings)
    known = {t.kernel for t in config.targets}
    table = Table(title=f"kernels in {settings.release_repository} {', '.join(settings.minors)}")
    for column in ("kernel", "OpenShift releases", "in versions.toml"):
        table.add_column(column, overflow="fold")
    for kernel, releases in found.kernels.items():
        add_text_row(
            table, kernel, ", ".join(releases), "yes" if kernel in known else Text("new", "yellow")
        )
    console.print(table)
    for problem in found.problems:
        console.print(f"note: {problem}", highlight=False, markup=False)
    text = path.read_text(encoding="utf-8")
    new_text, added, updated = discover_module.update_versions(text, found.kernels, chosen)
    console.print(
        f"{found.releases_read} release(s) read in {time.monotonic() - started:.2f} s "
        f"({registry.requests_sent} HTTP requests): {len(found.kernels)} kernel(s), "
        f"{len(added)} new, {len(updated)} with new OpenShift releases",
        highlight=False,
    )
    if dry_run:
        diff = difflib.unified_diff(
            text.splitlines(True), new_text.splitlines(True), str(path), str(path) + " (new)"
        )
        console.print("".join(diff) or "no change", markup=False, highlight=False)
        return 0
    if new_text != text:
        config_module.parse(tomllib.loads(new_text), path)  # never write a file we cannot read
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(new_text, encoding="utf-8")
        tmp.replace(path)
        console.print(f"updated {path}", markup=False, highlight=False)
    return 0
