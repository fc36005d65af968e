"""Every table the commands print, rendered from the records the services return.

Cells are Text, never markup: log lines, registry errors and paths can hold `[...]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from habana_tasks.build.compile_cache import CacheStats
from habana_tasks.build.labels import short_digest
from habana_tasks.build.plan import Action, BuildJob
from habana_tasks.build.rebuild import RebuildResult
from habana_tasks.build.results import JobResult, JobStatus
from habana_tasks.maintenance import preflight, status
from habana_tasks.maintenance.discover import Discovery, DiscoveryRun
from habana_tasks.maintenance.matrix import cell
from habana_tasks.maintenance.preflight import Answer, PreflightReport
from habana_tasks.maintenance.prune import PruneOutcome
from habana_tasks.maintenance.status import LibraryStatus, State, TargetStatus
from habana_tasks.maintenance.verify import Verified
from habana_tasks.verification.load_testing import LoadTestResult

ACTION_STYLE = {
    Action.BUILD: "yellow",
    Action.SKIP: "green",
    Action.FAIL: "red",
    Action.HOLD: "magenta",
    Action.SIGN: "yellow",
}
STATE_STYLE = {
    State.CURRENT: "green",
    State.STALE: "yellow",
    State.UNSIGNED: "yellow",
    State.MISSING: "yellow",
    State.FAILING: "magenta",
}


def table(title: str, *columns: str) -> Table:
    result = Table(title=title)
    for column in columns:
        result.add_column(column, overflow="fold")
    return result


def add_row(into: Table, *cells: str | Text) -> None:
    """Cells are shown as written; styled cells are passed as Text."""
    into.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


# Beyond this many, current images are one row: a daily no-op over a large library prints
# what needs attention, not thousands of "skip" rows (`invoke status` lists every image).
FOLD_CURRENT_AFTER = 20


def _folded_row(count: int) -> tuple[str, str]:
    return f"{count} targets", "current (fingerprints unchanged); `invoke status` lists each"


def plan_table(jobs: Sequence[BuildJob]) -> Table:
    out = table("plan", "target", "image", "action", "reason")
    current = [job for job in jobs if job.action is Action.SKIP]
    fold = len(current) > FOLD_CURRENT_AFTER
    for job in jobs:
        if fold and job.action is Action.SKIP:
            continue
        action = Text(job.action.value, ACTION_STYLE[job.action])
        add_row(out, job.target.tag, job.target.image, action, job.reason)
    if fold:
        targets, reason = _folded_row(len(current))
        add_row(out, targets, "", Text(Action.SKIP.value, ACTION_STYLE[Action.SKIP]), reason)
    return out


def summary_table(results: Sequence[JobResult], title: str = "summary") -> Table:
    out = table(
        title, "target", "action", "result", "digest", "compile", "load-tested", "seconds", "log"
    )
    current = [r for r in results if r.action is Action.SKIP and r.ok]
    fold = len(current) > FOLD_CURRENT_AFTER
    for r in results:
        if fold and r.action is Action.SKIP and r.ok:
            continue
        tested = "no"
        if r.load_tested:  # an image skipped as up to date was load-tested by an earlier run
            how = [r.load_test_boot or "", r.load_test_kernel or ""]
            how += [f"{r.load_test_seconds} s"] if r.load_test_seconds is not None else []
            tested = f"yes ({', '.join(w for w in how if w)})" if any(how) else "yes"
        quiet = r.ok and r.status is not JobStatus.HELD
        result = r.status.value if quiet else f"{r.status.value}: {r.detail}"
        add_row(
            out,
            r.tag,
            r.action.value,
            result,
            short_digest(r.digest),
            r.compiled.cache if r.compiled else "",
            tested,
            f"{r.seconds:.1f}",
            r.log or "",
        )
    if fold:
        targets, reason = _folded_row(len(current))
        add_row(out, targets, Action.SKIP.value, reason, "", "", "", "", "")
    return out


def cache_table(stats: CacheStats) -> Table:
    out = table("compile cache", "entries", "size", "max size", "hits", "misses")
    mib = [f"{size / 2**20:.1f} MiB" for size in (stats.size, stats.max_size)]
    add_row(out, str(stats.entries), *mib, str(stats.hits), str(stats.misses))
    return out


def load_test_table(reports: Iterable[LoadTestResult]) -> Table:
    out = table(
        "load tests",
        "image",
        "result",
        "kernel booted",
        "boot",
        "seconds",
        "initramfs MB",
        "reason",
    )
    for r in reports:
        add_row(
            out,
            r.image or "",
            Text("pass", "green") if r.passed else Text("FAIL", "red"),
            r.kernel,
            r.boot if r.kernel else "",
            f"{r.seconds:.1f}" if r.kernel else "",
            f"{r.initramfs_bytes / 1e6:.0f}" if r.initramfs_bytes else "",
            "\n".join([r.reason, *r.evidence]),
        )
    return out


def rebuild_table(results: Iterable[RebuildResult]) -> Table:
    out = table("verify-rebuild", "image", "result", "published", "rebuilt", "what differs")
    for r in results:
        lines = [str(r.failure)] if r.failure else []
        for layer in r.layers:
            lines.append(
                f"layer {layer.index}: {short_digest(layer.published)} -> "
                f"{short_digest(layer.rebuilt)}"
            )
            lines += [f"  {line}" for line in layer.files]
            if layer.more:
                lines.append(f"  and {layer.more} more file(s)")
        verdict = "DIFFERS" if r.rebuilt else "FAIL"
        add_row(
            out,
            r.image,
            Text("reproduced", "green") if r.reproduced else Text(verdict, "red"),
            short_digest(r.published),
            short_digest(r.rebuilt),
            "\n".join(lines),
        )
    return out


def status_table(repository: str, items: Iterable[TargetStatus]) -> Table:
    out = table(
        f"status: {repository}",
        "kernel",
        "driver",
        "state",
        "reason",
        "digest",
        "size",
        "load-tested",
        "signing",
        "cosign",
        "built",
    )
    for item in items:
        state = Text(item.state.value, STATE_STYLE.get(item.state, "red"))
        size = f"{item.size / 1e6:.1f} MB" if item.size else ""
        add_row(
            out,
            item.kernel,
            item.driver,
            state,
            item.reason,
            short_digest(item.digest),
            size,
            status.tested_by(item.load_test_boot),
            item.signing or "",
            item.cosign or "",
            item.created or "",
        )
    return out


def prune_table(repository: str, outcomes: Iterable[PruneOutcome], applied: bool) -> Table:
    title = f"prune: {repository}" + ("" if applied else " (dry run: --apply)")
    out = table(title, "tag", "digest", "reason", "result")
    for o in outcomes:
        add_row(out, o.item.tag, short_digest(o.item.digest), o.item.reason, o.result)
    return out


def discover_table(title: str, found: Discovery, known: set[str]) -> Table:
    out = table(title, "kernel", "OpenShift releases", "in versions.toml")
    for kernel, releases in found.kernels.items():
        state = "yes" if kernel in known else Text("new", "yellow")
        add_row(out, kernel, ", ".join(releases), state)
    return out


def preflight_table(repository: str, answers: Iterable[Answer]) -> Table:
    out = table(
        f"preflight: {repository}",
        "source",
        "kernel",
        "driver",
        "image",
        "load-tested",
        "signed",
        "current",
        "detail",
        "to do",
    )

    def cell(value: bool | None) -> Text:
        if value is None:
            return Text("n/a")
        return Text("yes", "green") if value else Text("no", "red")

    for a in answers:
        add_row(
            out,
            a.origin,
            a.kernel,
            a.driver,
            cell(a.present),
            cell(a.load_tested),
            cell(a.signed),
            cell(a.current),
            a.detail,
            a.action or "-",
        )
    return out


def print_line(console: Console, text: str) -> None:
    """A line as written: no markup, no highlighting, never wrapped (logs keep it whole)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def show_status(console: Console, found: LibraryStatus, repository: str, form: str) -> None:
    """`status` in the format asked: the table (and what is not named), JSON or Markdown."""
    if form == "json":
        console.print_json(status.to_json(found.items, found.orphans, found.problems))
    elif form == "markdown":
        print_line(console, status.to_markdown(found.items, repository))
    else:
        console.print(status_table(repository, found.items))
        if found.orphans:
            print_line(console, f"tags the matrix no longer names: {', '.join(found.orphans)}")
        for line in (*found.problems, found.summary):
            print_line(console, line)


def show_preflight(console: Console, report: PreflightReport, repository: str, form: str) -> None:
    """`preflight` in the format asked; the table ends with the verdict and its cost."""
    if form == "json":
        console.print_json(preflight.to_json(report.answers, report.problems))
    elif form == "markdown":
        print_line(console, preflight.to_markdown(report.answers, report.problems, repository))
    else:
        console.print(preflight_table(repository, report.answers))
        for problem in report.problems:
            print_line(console, f"error: {problem}")
        print_line(console, report.verdict)


def show_discovery(console: Console, run: DiscoveryRun, known: set[str], path: Path) -> None:
    """What `discover` found (a table and notes), what it changes, and what it took."""
    settings, found, change = run.settings, run.found, run.change
    title = f"kernels in {settings.release_repository} {', '.join(settings.minors)}"
    console.print(discover_table(title, found, known))
    for problem in found.problems:
        print_line(console, f"note: {problem}")
    print_line(
        console,
        f"{found.releases_read} release(s) read in {run.seconds:.2f} s "
        f"({run.requests} HTTP requests): {len(found.kernels)} kernel(s), "
        f"{len(change.added)} new, {len(change.updated)} with new OpenShift releases",
    )
    if change.written:
        print_line(console, f"updated {path}")
    else:
        print_line(console, change.diff or "no change")


def markdown_summary(results: Sequence[JobResult], reports: int) -> str:
    """Several runs' results as one job summary (a matrix's batches): counts, then every
    target that did something or failed; the current ones are counted only."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    shown = [r for r in results if r.status is not JobStatus.SKIPPED]
    lines = [
        f"## Build: {len(results)} pair(s) from {reports} run(s): "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
        "",
    ]
    if shown:
        lines += [
            "| pair | result | digest | seconds | detail |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in sorted(shown, key=lambda r: (r.ok, r.tag)):
            lines.append(
                f"| `{r.tag}` | {r.status.value} | {short_digest(r.digest) or '-'} | "
                f"{r.seconds:.0f} | {cell(r.detail)[:300]} |"
            )
    return "\n".join(lines) + "\n"


def verify_table(results: Iterable[Verified]) -> Table:
    out = table("verify", "image", "digest", "result", "signed", "SBOM", "provenance", "what")

    def mark(value: bool) -> Text:
        return Text("yes", "green") if value else Text("no", "red")

    for r in results:
        result = (
            Text("unknown", "yellow") if r.unknown else
            Text("ok", "green") if r.ok else Text("FAIL", "red")
        )  # fmt: skip
        what = r.unknown or "\n".join(r.problems)
        add_row(out, r.image, short_digest(r.digest), result, mark(r.signed), mark(r.sbom),
                mark(r.provenance), what)  # fmt: skip
    return out
