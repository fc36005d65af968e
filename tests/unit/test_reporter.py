from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from habana_tasks.build.plan import Action, BuildJob
from habana_tasks.build.results import JobResult, JobStatus
from habana_tasks.cli.progress import (
    PlainReporter,
    RichReporter,
    make_reporter,
)
from habana_tasks.cli.tables import FOLD_CURRENT_AFTER, plan_table, summary_table
from habana_tasks.core.errors import Failure
from tests.samples import TARGET

RESULT = JobResult(
    "1.0-k",
    Action.BUILD,
    JobStatus.FAILED,
    "load test failed",
    None,
    3.2,
    "/l.log",
    failure=Failure("load test", "load test failed"),
)


def test_plain_reporter_prints_stages_and_results_not_log_lines() -> None:
    out = io.StringIO()
    reporter = PlainReporter(Console(file=out, width=200))
    reporter.start(["1.0-k"])
    reporter.stage("1.0-k", "build")
    reporter.line("1.0-k", "CC [M] noisy compiler line")
    reporter.finish(RESULT)
    assert out.getvalue().splitlines() == [
        "[1.0-k] build",
        "[1.0-k] failed: load test failed (3.2 s)",
    ]


def test_rich_board_has_one_row_per_running_target() -> None:
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, width=200, force_terminal=True))
    reporter.start(["1.0-k", "1.0-j"])
    reporter.stage("1.0-k", "load test")
    reporter.line("1.0-k", "LOAD-TEST: booted 6.1.0-56-amd64")
    text = _render(reporter)
    assert "load test" in text and "LOAD-TEST: booted 6.1.0-56-amd64" in text and "waiting" in text
    reporter.finish(RESULT)
    assert "1.0-k" not in _render(reporter)  # finished rows leave the board
    reporter.close()
    assert "failed" in out.getvalue()


def _render(reporter: RichReporter) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(reporter._render())
    return buffer.getvalue()


def test_without_a_terminal_the_reporter_is_plain() -> None:
    assert isinstance(make_reporter(Console(file=io.StringIO())), PlainReporter)


def test_text_from_logs_is_never_read_as_markup() -> None:
    cause = 'ERROR: modpost: "x" [/tmp/unpacked/drivers/misc/habanalabs/habanalabs.ko] undefined!'
    failure = Failure("build", cause)
    failed = JobResult(
        "1.0-k", Action.BUILD, JobStatus.FAILED, cause, None, 1.0, "/l.log", failure=failure
    )
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, width=300, force_terminal=True))
    reporter.start(["1.0-k"])
    reporter.line("1.0-k", "[/bold] a make line with [brackets]")
    assert "[/bold] a make line" in _render(reporter)
    reporter.finish(failed)
    reporter.close()
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(summary_table([failed]))
    assert cause in buffer.getvalue()
    assert cause in out.getvalue()


def _rows(table: Table) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(table)
    return [line for line in buffer.getvalue().splitlines() if "│" in line]  # not the header


def _jobs(current: int, build: int) -> list[BuildJob]:
    made = [replace(TARGET, driver=f"1.{i}") for i in range(current + build)]
    skip = [BuildJob(t, Action.SKIP, "up to date") for t in made[:current]]
    return skip + [BuildJob(t, Action.BUILD, "not in the repository") for t in made[current:]]


def test_a_large_no_op_is_one_row_what_needs_work_keeps_its_own() -> None:
    few = _rows(plan_table(_jobs(FOLD_CURRENT_AFTER, 1)))
    assert len(few) == FOLD_CURRENT_AFTER + 1  # every row
    many = _rows(plan_table(_jobs(FOLD_CURRENT_AFTER + 1, 2)))
    assert len(many) == 2 + 1
    assert f"{FOLD_CURRENT_AFTER + 1} targets" in many[-1] and "skip" in many[-1]
    assert sum("not in the repository" in row for row in many) == 2


def test_the_summary_folds_current_images_never_failures() -> None:
    ok = [JobResult(f"1.{i}-k", Action.SKIP, JobStatus.SKIPPED, "up to date") for i in range(30)]
    rows = _rows(summary_table([*ok, RESULT]))
    assert len(rows) == 2
    assert "load test failed" in rows[0] and "30 targets" in rows[1]
