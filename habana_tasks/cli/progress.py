"""How a build run shows its progress: a rich live board on a terminal, plain lines otherwise.

Workers call it from their threads; full logs go to files, the board shows the last line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from habana_tasks.build.reporter import Reporter
from habana_tasks.build.results import JobResult, JobStatus


@dataclass
class _Row:
    stage: str = "waiting"
    started: float = field(default_factory=time.monotonic)
    last: str = ""
    done: bool = False


class PlainReporter:
    """Stage changes and results as plain lines (CI logs, pipes)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._lock = threading.Lock()

    def start(self, names: Sequence[str]) -> None:
        return None

    def stage(self, name: str, stage: str) -> None:
        with self._lock:
            self.console.print(f"[{name}] {stage}", markup=False)

    def line(self, name: str, line: str) -> None:
        return None

    def finish(self, result: JobResult) -> None:
        with self._lock:
            self.console.print(
                f"[{result.tag}] {result.status}: {result.detail} ({result.seconds:.1f} s)",
                markup=False,
            )

    def message(self, text: str) -> None:
        with self._lock:
            self.console.print(text, markup=False)

    def close(self) -> None:
        return None


class RichReporter:
    """One live row per target: stage, elapsed seconds, last log line."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        # get_renderable: every refresh redraws from the rows, so elapsed seconds keep ticking.
        self._live = Live(
            console=self.console, refresh_per_second=4, transient=True, get_renderable=self._render
        )

    def _render(self) -> Table:
        table = Table(box=None, expand=True, show_header=True)
        table.add_column("target", no_wrap=True)
        table.add_column("stage", no_wrap=True)
        table.add_column("s", justify="right", no_wrap=True)
        table.add_column("last line", no_wrap=True, overflow="ellipsis", ratio=1)
        with self._lock:
            rows = list(self._rows.items())
        for name, row in rows:
            if row.done:
                continue
            elapsed = time.monotonic() - row.started if row.stage != "waiting" else 0.0
            table.add_row(Text(name), Text(row.stage), f"{elapsed:.0f}", Text(row.last))
        return table

    def start(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._rows[name] = _Row()
        self._live.start()

    def stage(self, name: str, stage: str) -> None:
        with self._lock:
            row = self._rows.setdefault(name, _Row())
            if row.stage == "waiting":
                row.started = time.monotonic()
            row.stage = stage

    def line(self, name: str, line: str) -> None:
        with self._lock:
            self._rows.setdefault(name, _Row()).last = line.strip()

    def finish(self, result: JobResult) -> None:
        with self._lock:
            self._rows.setdefault(result.tag, _Row()).done = True
        style = {JobStatus.OK: "green", JobStatus.SKIPPED: "dim"}.get(result.status, "red")
        self._live.console.print(
            Text.assemble(
                (f"{result.status:7}", style),
                f" {result.tag}: {result.detail} ({result.seconds:.1f} s)",
            ),
            highlight=False,
        )

    def message(self, text: str) -> None:
        self._live.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._live.stop()


def make_console(stderr: bool = False) -> Console:
    """A terminal console, or a wide plain one so tables stay readable in CI logs; `stderr`:
    for what a command says beside the document it prints."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(width=200, highlight=False, stderr=stderr)


def make_reporter(console: Console | None = None) -> Reporter:
    console = console or make_console()
    if console.is_terminal and sys.stdout.isatty():
        return RichReporter(console)
    return PlainReporter(console)
