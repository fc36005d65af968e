"""What each invoke task does, as wiring: load the versions file, call the service that owns the
work, render what it returns, and give the exit code. tasks.py only parses arguments."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml
from rich.console import Console

from habana_tasks import (
    build_service,
    kmm,
    load_test,
    local_files,
    preflight,
    prune,
    status,
    tables,
)
from habana_tasks import discover as discover_module
from habana_tasks.auth import Credentials, check_credential_files, find_credentials
from habana_tasks.build_service import BuildRun
from habana_tasks.config import BuildTarget, Config
from habana_tasks.errors import Interrupted, UsageError
from habana_tasks.kernel_modules import KernelModuleStore
from habana_tasks.pipeline import run_stamp
from habana_tasks.podman import Podman
from habana_tasks.project import Project
from habana_tasks.registry import RegistryClient
from habana_tasks.reporter import JobResult, make_console, make_reporter


def announcer(console: Console) -> Callable[[str], None]:
    """How a run's one-off notices (the build isolation chosen) reach the user."""
    return lambda text: console.print(text, markup=False, highlight=False)


def load_inputs(project: Project, versions: str | None, authfile: str | None = None) -> Config:
    """The versions file, and the credential files later lookups will read, checked before any
    request: a problem in either ends the command with exit 2."""
    config = project.load(versions)
    env = {**os.environ, "REGISTRY_AUTH_FILE": authfile} if authfile else None
    check_credential_files(env)
    return config


def write_output(path: Path, text: str) -> None:
    """The command's document, written where --output said (checked before any request)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {str(path)!r}: cannot write: {exc.strerror}") from exc


def print_line(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


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
    load_test: bool = True,
    console: Console | None = None,
) -> int:
    """Resolve, plan and (unless dry_run) build, check, load-test and push; the exit code."""
    console = console or make_console()
    config = load_inputs(project, versions)
    targets = config.select(kernel, driver)
    run = run_build(
        project,
        config,
        targets,
        jobs=jobs,
        force=force,
        dry_run=dry_run,
        push=push,
        load_test=load_test,
        console=console,
    )
    return 0 if run.ok else 1


def run_build(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    *,
    console: Console,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    load_test: bool = True,
    podman: Podman | None = None,
) -> BuildRun:
    """The plan shown, then (unless dry_run) executed with a live board, then the summary."""
    reporter = make_reporter(console)
    podman = podman or build_service.make_podman(reporter.message)
    planned = build_service.resolve_and_plan(
        project, config, targets, force=force, load_tests=load_test
    )
    console.print(tables.plan_table(planned.jobs))
    print_line(console, planned.summary)
    if dry_run:
        return BuildRun(planned, build_service.dry_run_results(planned))
    try:
        run = build_service.execute(
            project,
            config,
            planned,
            podman=podman,
            reporter=reporter,
            jobs=jobs,
            push=push,
            load_test=load_test,
        )
    except Interrupted as exc:
        console.print(tables.summary_table([r for r in exc.results if isinstance(r, JobResult)]))
        print_line(console, f"report: {exc.report}")
        raise
    console.print(tables.summary_table(run.results))
    print_line(console, f"report: {run.report}")
    return run


def load_tests(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    image: str | None = None,
    timeout: float = load_test.DEFAULT_TIMEOUT,
    console: Console | None = None,
) -> int:
    """Load-test published (or local) images in their exact kernels; the exit code."""
    console = console or make_console()
    config = load_inputs(project, versions)
    targets = config.select(kernel, driver)
    if image and len(targets) != 1:
        raise UsageError("--image tests one image: name its --kernel (and --driver)")
    registry = RegistryClient(config.insecure_registries)
    podman = build_service.make_podman(announcer(console))
    store = KernelModuleStore(podman, project.kernels)
    stamp = run_stamp()
    logs = project.cache / "logs" / f"load-test-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    reports = []
    for target in targets:
        work = project.cache / "work" / f"load-test-{stamp}" / target.tag
        with (logs / f"{target.tag}.log").open("w", encoding="utf-8") as log:
            try:
                reports.append(
                    load_test.retest_image(
                        podman,
                        store,
                        registry,
                        config,
                        target,
                        image or target.image,
                        work,
                        log,
                        timeout,
                    )
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    console.print(tables.load_test_table(reports))
    report = logs / "report.json"
    report.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    print_line(console, f"report: {report}")
    return 0 if all(r.passed for r in reports) else 1


def status_command(
    project: Project,
    versions: str | None = None,
    *,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """Every pair: current, stale (why), missing or unknown; and tags no longer named."""
    if output_format not in ("table", "json", "markdown"):
        raise UsageError(f"--format {output_format!r}: expected table, json or markdown")
    console = console or make_console()
    config = load_inputs(project, versions)
    found = status.library_status(project, config)
    if output_format == "json":
        console.print_json(status.to_json(found.items, found.orphans, found.problems))
    elif output_format == "markdown":
        console.print(
            status.to_markdown(found.items, config.repository),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(tables.status_table(config.repository, found.items))
        if found.orphans:
            print_line(console, f"tags the matrix no longer names: {', '.join(found.orphans)}")
        for problem in found.problems:
            print_line(console, problem)
        print_line(console, found.summary)
    return 0 if found.ok else 1


def matrix(project: Project, versions: str | None = None, output_format: str = "github") -> str:
    """The pending pairs (missing or stale) for a CI fan-out; printed by the task."""
    if output_format != "github":
        raise UsageError(f"--format {output_format!r}: expected github")
    config = load_inputs(project, versions)
    run = build_service.resolve_and_plan(project, config, config.targets)
    return status.github_matrix(status.statuses(run.jobs, run.remote))


def kmm_module(
    project: Project,
    driver: str,
    versions: str | None = None,
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
    sign_key_secret: str | None = None,
    sign_cert_secret: str | None = None,
    signed_repository: str | None = None,
) -> str:
    """A KMM Module (YAML) mapping every kernel whose image the repository holds for driver;
    with both secrets, KMM signs each image in the cluster and pushes the signed copy."""
    if bool(sign_key_secret) != bool(sign_cert_secret):
        raise UsageError("--sign-key-secret and --sign-cert-secret go together: give both")
    if signed_repository and not sign_key_secret:
        raise UsageError("--signed-repository needs --sign-key-secret and --sign-cert-secret")
    config = load_inputs(project, versions)
    sign = None
    if sign_key_secret and sign_cert_secret:
        repository = signed_repository or f"{config.repository}-signed"
        if repository == config.repository:
            raise UsageError(
                f"--signed-repository {repository!r}: KMM pushes the signed images there; it "
                "must differ from the library's repository, which holds the unsigned ones"
            )
        sign = kmm.KmmSigning(sign_key_secret, sign_cert_secret, repository)
    registry = RegistryClient(config.insecure_registries)
    module = kmm.library_module(config, driver, registry, name=name, namespace=namespace, sign=sign)
    return yaml.safe_dump(module, sort_keys=False)


def prune_command(
    project: Project,
    versions: str | None = None,
    *,
    older_than: int | None = None,
    apply: bool = False,
    console: Console | None = None,
) -> int:
    """List (and with apply, delete by digest) tags the matrix no longer names."""
    console = console or make_console()
    config = load_inputs(project, versions)
    registry = RegistryClient(config.insecure_registries)
    count, outcomes = prune.prune_library(
        config, registry, older_than_days=older_than, apply=apply, now=datetime.now(UTC)
    )
    console.print(tables.prune_table(config.repository, outcomes, apply))
    print_line(console, f"{count} tag(s), {len(outcomes)} to prune")
    return 1 if any(o.failed for o in outcomes) else 0


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
    config = load_inputs(project, versions, authfile)
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
    title = f"kernels in {settings.release_repository} {', '.join(settings.minors)}"
    console.print(tables.discover_table(title, found, {t.kernel for t in config.targets}))
    for problem in found.problems:
        print_line(console, f"note: {problem}")
    text = local_files.read_text(path, local_files.VERSIONS_FILE)
    new_text, added, updated = discover_module.update_versions(text, found.kernels, chosen)
    print_line(
        console,
        f"{found.releases_read} release(s) read in {time.monotonic() - started:.2f} s "
        f"({registry.requests_sent} HTTP requests): {len(found.kernels)} kernel(s), "
        f"{len(added)} new, {len(updated)} with new OpenShift releases",
    )
    if dry_run:
        diff = difflib.unified_diff(
            text.splitlines(True), new_text.splitlines(True), str(path), str(path) + " (new)"
        )
        print_line(console, "".join(diff) or "no change")
        return 0
    if new_text != text:
        discover_module.write_versions(path, new_text)
        print_line(console, f"updated {path}")
    return 0


def preflight_command(
    project: Project,
    versions: str | None = None,
    *,
    openshift: Sequence[str] = (),
    nodes: str | None = None,
    drivers: Sequence[str] = (),
    arch: str = "x86_64",
    release_repository: str | None = None,
    authfile: str | None = None,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """Does the library hold a current, load-tested (and signed) image for every kernel the
    given OpenShift releases or nodes run, for every driver? 0 only when every answer is yes."""
    if output_format not in ("table", "json", "markdown"):
        raise UsageError(f"--format {output_format!r}: expected table, json or markdown")
    if bool(openshift) == bool(nodes):
        raise UsageError("give the releases (--openshift 4.16.12, repeatable) or --nodes FILE")
    console = console or make_console()
    config = load_inputs(project, versions, authfile)
    chosen = preflight.drivers_for(config, drivers)
    started = time.monotonic()

    def credentials(registry: str, repository: str) -> Credentials | None:
        env = {**os.environ, "REGISTRY_AUTH_FILE": authfile} if authfile else None
        return find_credentials(registry, repository, env)

    registry = RegistryClient(config.insecure_registries, credentials=credentials)
    if openshift:
        repository = release_repository or config.discover.release_repository
        sources = preflight.release_kernels(registry, repository, openshift, arch)
    else:
        sources = preflight.node_kernels(Path(nodes or ""))
    answers, errors, requests = preflight.check(
        config,
        sources,
        chosen,
        registry,
        lambda targets: build_service.resolve_and_plan(project, config, targets),
    )
    ok = not errors and all(a.ok for a in answers)
    if output_format == "json":
        console.print_json(preflight.to_json(answers, errors))
    elif output_format == "markdown":
        text = preflight.to_markdown(answers, errors, config.repository)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(tables.preflight_table(config.repository, answers))
        for error in errors:
            print_line(console, f"error: {error}")
        print_line(
            console,
            f"{'ready' if ok else 'NOT ready'}: {len(answers)} answer(s) in "
            f"{time.monotonic() - started:.2f} s ({requests} HTTP requests)",
        )
    return 0 if ok else 1
