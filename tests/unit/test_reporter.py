from __future__ import annotations

import io

from rich.console import Console

from habana_tasks.plan import Action
from habana_tasks.reporter import JobResult, JobStatus, PlainReporter, RichReporter, make_reporter
from habana_tasks.tables import summary_table

RESULT = JobResult("1.0-k", Action.BUILD, JobStatus.FAILED, "load test failed", None, 3.2, "/l.log")


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
    reporter.stage("1.0-k", "smoke")
    reporter.line("1.0-k", "SMOKE: booted 6.1.0-56-amd64")
    text = _render(reporter)
    assert "smoke" in text and "SMOKE: booted 6.1.0-56-amd64" in text and "waiting" in text
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
    failed = JobResult("1.0-k", Action.BUILD, JobStatus.FAILED, cause, None, 1.0, "/l.log")
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
