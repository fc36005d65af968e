"""What each invoke task does, as wiring: load the inputs, call the one service that owns the
work, render what it returns, and give the exit code (core.errors holds the table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from habana_tasks.build import reproof, service
from habana_tasks.build.results import JobResult, read_report
from habana_tasks.build.service import BuildOptions, BuildRun
from habana_tasks.cli import tables
from habana_tasks.cli.arguments import MAX_SELECTOR
from habana_tasks.cli.progress import make_console, make_reporter
from habana_tasks.cli.tables import print_line
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core import errors
from habana_tasks.core.errors import Interrupted, UsageError
from habana_tasks.engine.podman import Podman
from habana_tasks.maintenance import status
from habana_tasks.maintenance.matrix import (
    DEFAULT_MAX_JOBS,
    batches,
    github_matrix,
    markdown_plan,
)
from habana_tasks.registry.auth import authfile_environment, check_credential_files
from habana_tasks.verification.load_testing import DEFAULT_TIMEOUT

DEFAULT_OPTIONS = BuildOptions()


def announcer(console: Console) -> Callable[[str], None]:
    """How a run's one-off notices (the build isolation chosen) reach the user."""
    return lambda text: print_line(console, text)


def load_inputs(project: Project, versions: str | None, authfile: str | None = None) -> Config:
    """The versions file, and the credential files later lookups will read, checked before any
    request: a problem in either ends the command with exit 2."""
    config = project.load(versions)
    check_credential_files(authfile_environment(authfile))
    return config


def write_output(path: Path, text: str) -> None:
    """The command's document, written where --output said (checked before any request)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {str(path)!r}: cannot write: {exc.strerror}") from exc


def build(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    only: Sequence[str] = (),
    options: BuildOptions = DEFAULT_OPTIONS,
    console: Console | None = None,
) -> int:
    """Resolve, plan and (unless a dry run) build, check, load-test and push; the exit code.
    `only`: exactly these pairs, by tag (a matrix batch)."""
    config = load_inputs(project, versions)
    targets = config.only(only) if only else config.select(kernel, driver)
    return run_build(project, config, targets, console or make_console(), options).exit_code


def run_build(
    project: Project,
    config: Config,
    targets: Sequence[BuildTarget],
    console: Console,
    options: BuildOptions = DEFAULT_OPTIONS,
    podman: Podman | None = None,
) -> BuildRun:
    """The plan shown, then (unless a dry run) executed with a live board, then the summary."""
    reporter = make_reporter(console)
    podman = podman or service.make_podman(reporter.message)
    planned = service.resolve_and_plan(
        project,
        config,
        targets,
        force=options.force,
        load_tests=options.load_test,
        retry_failed=options.retry_failed,
        secure_boot=options.secure_boot,
    )
    console.print(tables.plan_table(planned.jobs))
    print_line(console, planned.summary)
    if options.dry_run:
        return BuildRun(planned, service.dry_run_results(planned))
    try:
        run = service.execute(project, config, planned, podman, reporter, options)
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
    timeout: float = DEFAULT_TIMEOUT,
    secure_boot: bool = False,
    jobs: int = 1,
    console: Console | None = None,
) -> int:
    """Load-test published (or local) images in their exact kernels; the exit code."""
    console = console or make_console()
    config = load_inputs(project, versions)
    targets = config.select(kernel, driver)
    podman = service.make_podman(announcer(console))
    run = reproof.load_test_images(
        project,
        config,
        targets,
        podman=podman,
        image=image,
        timeout=timeout,
        secure_boot_test=secure_boot,
        jobs=jobs,
    )
    console.print(tables.load_test_table(run.results))
    print_line(console, f"report: {run.report}")
    return run.exit_code


def verify_rebuild(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    console: Console | None = None,
) -> int:
    """Rebuild published images from their inputs (nothing pushed) and compare the digests."""
    console = console or make_console()
    config = load_inputs(project, versions)
    targets = config.select(kernel, driver)
    run = reproof.verify_rebuilds(project, config, targets, service.make_podman(announcer(console)))
    console.print(tables.rebuild_table(run.results))
    print_line(console, f"report: {run.report}")
    return run.exit_code


def status_command(
    project: Project,
    versions: str | None = None,
    *,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """Every pair: current, stale (why), missing or unknown; and tags no longer named."""
    console = console or make_console()
    config = load_inputs(project, versions)
    found = status.library_status(project, config)
    tables.show_status(console, found, config.repository, output_format)
    return errors.OK if found.ok else errors.UNKNOWN_STATE


def summary(project: Project, reports: str | None = None) -> tuple[str, int]:
    """Every report.json under `reports` (default: this project's logs; in CI, a matrix's
    downloaded batches) as one Markdown summary, and the exit code of all of them together."""
    root = Path(reports).expanduser() if reports is not None else project.cache / "logs"
    found = [root] if root.is_file() else sorted(service.build_reports(root))
    if not found:
        raise UsageError(
            f"--reports {str(root)!r}: expected a build run's report.json or a folder holding "
            "some (`invoke build` and `build-all` write one per run under .cache/logs)"
        )
    results = [result for report in found for result in read_report(report)]
    code = errors.exit_code_for(result.failure for result in results)
    return tables.markdown_summary(results, len(found)), code


def matrix(
    project: Project,
    versions: str | None = None,
    *,
    max_jobs: int = DEFAULT_MAX_JOBS,
    output_format: str = "github",
) -> str:
    """The pending pairs (missing or stale) in at most `max_jobs` batches for a CI fan-out, or
    that plan as Markdown; printed by the task."""
    config = load_inputs(project, versions)
    run = service.resolve_and_plan(project, config, config.targets)
    items = status.statuses(run.jobs, run.remote)
    found = batches(items, max_jobs)
    if output_format == "markdown":
        return markdown_plan(items, found)
    return github_matrix(found, MAX_SELECTOR)
