"""Every table the commands print, rendered from the records the services return.

Cells are Text, never markup: log lines, registry errors and paths can hold `[...]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.table import Table
from rich.text import Text

from habana_tasks import labels
from habana_tasks.config import BuildTarget
from habana_tasks.discover import Discovery
from habana_tasks.load_test import LoadTestReport
from habana_tasks.plan import Action, BuildJob
from habana_tasks.preflight import Answer
from habana_tasks.prune import PruneOutcome
from habana_tasks.registry import Existence, RemoteImage
from habana_tasks.reporter import JobResult
from habana_tasks.status import State, TargetStatus

ACTION_STYLE = {Action.BUILD: "yellow", Action.SKIP: "green", Action.FAIL: "red"}
STATE_STYLE = {State.CURRENT: "green", State.STALE: "yellow", State.MISSING: "yellow"}


def short(digest: str | None) -> str:
    return f"sha256:{labels.short_digest(digest)}" if digest else ""


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
    out = table(title, "target", "action", "result", "digest", "load-tested", "seconds", "log")
    current = [r for r in results if r.action is Action.SKIP and r.ok]
    fold = len(current) > FOLD_CURRENT_AFTER
    for r in results:
        if fold and r.action is Action.SKIP and r.ok:
            continue
        tested = "no"
        if r.load_tested:  # an image skipped as up to date was load-tested by an earlier run
            tested = (
                f"yes ({r.load_test_kernel}, {r.load_test_seconds} s)"
                if r.load_test_kernel
                else "yes"
            )
        result = r.status.value if r.ok else f"{r.status.value}: {r.detail}"
        add_row(
            out,
            r.tag,
            r.action.value,
            result,
            short(r.digest),
            tested,
            f"{r.seconds:.1f}",
            r.log or "",
        )
    if fold:
        targets, reason = _folded_row(len(current))
        add_row(out, targets, Action.SKIP.value, reason, "", "", "", "")
    return out


def library_table(repository: str, held: Iterable[tuple[BuildTarget, RemoteImage]]) -> Table:
    """What the repository holds for every target: the library as a user would publish it."""
    columns = ("kernel", "driver", "image", "digest", "size", "load-tested", "created")
    out = table(f"library: {repository}", *columns)
    for target, remote in held:
        if remote.existence is Existence.PRESENT:
            size = f"{(remote.size or 0) / 1e6:.1f} MB"
            created = remote.labels.get(labels.OCI + "created", "")
            tested = remote.labels.get(labels.LOAD_TESTED, "no label")
            add_row(
                out,
                target.kernel,
                target.driver,
                target.image,
                remote.digest or "",
                size,
                tested,
                created,
            )
        else:
            add_row(
                out,
                target.kernel,
                target.driver,
                target.image,
                remote.existence.value,
                remote.error or "",
                "",
                "",
            )
    return out


def load_test_table(reports: Iterable[LoadTestReport]) -> Table:
    out = table(
        "load tests", "image", "result", "kernel booted", "seconds", "initramfs MB", "reason"
    )
    for r in reports:
        add_row(
            out,
            r.image,
            Text("pass", "green") if r.passed else Text("FAIL", "red"),
            r.kernel or "",
            f"{r.seconds:.1f}" if r.seconds is not None else "",
            f"{r.initramfs_bytes / 1e6:.0f}" if r.initramfs_bytes else "",
            "\n".join([r.reason, *r.evidence]),
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
            short(item.digest),
            size,
            "yes" if item.load_tested else "no",
            item.signing or "",
            item.created or "",
        )
    return out


def prune_table(repository: str, outcomes: Iterable[PruneOutcome], applied: bool) -> Table:
    title = f"prune: {repository}" + ("" if applied else " (dry run: --apply)")
    out = table(title, "tag", "digest", "reason", "result")
    for o in outcomes:
        add_row(out, o.item.tag, short(o.item.digest), o.item.reason, o.result)
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
            a.action or "-",
        )
    return out
