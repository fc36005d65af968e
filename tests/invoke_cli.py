"""The command line run in the test's own process, through invoke's real parser."""

from __future__ import annotations

import pytest
from invoke.collection import Collection
from invoke.program import Program

import tasks


def invoke(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`invoke <argv>` as a user types it: its exit code, standard output and standard error."""
    program = Program(namespace=Collection.from_module(tasks), name="invoke", binary="invoke")
    with pytest.raises(SystemExit) as exited:
        program.run(["invoke", *argv], exit=True)
    code = exited.value.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err
