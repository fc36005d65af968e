"""A stand-in for ProcessRunner in unit tests: records every argv, answers from a script.

Its real counterpart is habana_tasks.core.process.ProcessRunner, exercised by
tests/unit/test_process.py and by every integration test.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from habana_tasks.core.errors import CommandError
from habana_tasks.core.process import Completed, LineSink, ProcessRunner
from habana_tasks.engine.podman import EMPTY_NETWORK

# argv -> (exit code, output lines); None means "exit 0, no output".
Answer = Callable[[list[str]], tuple[int, list[str]] | None]


def without_empty_network(argv: list[str]) -> list[str]:
    """The podman command a chroot build runs inside an empty network namespace."""
    for prefix in EMPTY_NETWORK.values():
        if argv[: len(prefix)] == list(prefix):
            return argv[len(prefix) :]
    return argv


class FakeRunner(ProcessRunner):
    def __init__(self, answer: Answer | None = None) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[list[str]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        on_line: LineSink | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
        check: bool = True,
        keep_output: bool = False,
    ) -> Completed:
        argv = [str(a) for a in argv]
        if self.stopping:  # as the real runner: nothing starts once every child was stopped
            raise CommandError(argv, -signal.SIGINT, ["not started: interrupted"])
        self.calls.append(argv)
        code, lines = (self.answer(argv) if self.answer else None) or (0, [])
        for line in lines:
            if on_line:
                on_line(line)
        if check and code != 0:
            raise CommandError(argv, code, lines)
        return Completed(code, tuple(lines) if keep_output else (), tuple(lines))

    def commands(self, *prefix: str) -> list[list[str]]:
        """The calls whose argv starts with prefix."""
        return [c for c in self.calls if c[: len(prefix)] == list(prefix)]
