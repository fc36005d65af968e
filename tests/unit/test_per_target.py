"""Commands that act on each target in turn (load-test, verify-rebuild): several at once keep
the targets' order, one log each, and an interrupt stops every command the others started."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import pytest

from habana_tasks.build.service import RunFolders, per_target
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import CommandError
from habana_tasks.core.process import ProcessRunner
from tests.samples import TARGET

TAGS = ("a", "b", "c")


def targets() -> list[BuildTarget]:
    return [replace(TARGET, tag=tag) for tag in TAGS]


def test_two_at_a_time_keep_the_order_and_a_log_each(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path / "work", tmp_path / "logs")
    started = threading.Barrier(2, timeout=10)  # both first targets run at the same time

    def run(target: BuildTarget, work: Path, log: TextIO) -> str:
        if target.tag != "c":
            started.wait()
        log.write(f"tested {target.tag}\n")
        return target.tag

    assert per_target(folders, targets(), run, jobs=2) == list(TAGS)
    for tag in TAGS:
        assert (folders.logs / f"{tag}.log").read_text() == f"tested {tag}\n"


def test_an_interrupt_stops_what_the_other_workers_started(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path / "work", tmp_path / "logs")
    runner = ProcessRunner()
    other_started = threading.Event()

    def run(target: BuildTarget, work: Path, log: TextIO) -> str:
        if target.tag == "a":
            other_started.wait(10)
            raise KeyboardInterrupt
        other_started.set()
        try:
            runner.run(["sleep", "300"])
        except CommandError as exc:
            ended.append(exc.returncode)
        return target.tag

    ended: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        per_target(folders, targets()[:2], run, jobs=2, runner=runner)
    # The other worker's command was stopped by a signal (or never started), not left running.
    assert runner.stopping and len(ended) == 1 and ended[0] < 0, ended
