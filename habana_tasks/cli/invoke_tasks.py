"""invoke tasks made from declared options: the signature and help invoke reads, the checks run
before the command does anything, and one way out for every outcome (an exit code and one line,
never a traceback)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.tasks import Task, task

from habana_tasks.cli.options import READ_FIRST, Given, Option
from habana_tasks.core.errors import (
    INTERNAL_ERROR_CODE,
    HabanaError,
    exit_codes_text,
    internal_error,
)
from habana_tasks.core.process import interruption, sigterm_as_interrupt

Command = Callable[[Given], int | None]


class _Task(Task[Any]):
    """invoke's Task hands its help out once (reading the arguments empties the help dict); this
    one keeps it, so that a task parsed twice in one process still shows its help."""

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        kept = dict(self.help)
        try:
            return super().get_arguments(ignore_unknown_help)
        finally:
            self.help = kept


def run(call: Callable[[], int | None]) -> None:
    """Runs a command as invoke's task: its errors, interrupts and bugs become exit codes."""
    try:
        with sigterm_as_interrupt():
            code = call()
    except HabanaError as exc:
        details = f"\n{exc.details}" if exc.details else ""
        raise Exit(f"error: {exc}{details}", code=exc.exit_code) from None
    except KeyboardInterrupt as exc:
        error = interruption(exc)
        raise Exit(f"{error.word}: every child process was stopped", code=error.exit_code) from None
    except Exception as exc:  # a bug: one line and its own code, never a traceback
        raise Exit(internal_error(exc), code=INTERNAL_ERROR_CODE) from None
    if code:
        raise Exit(code=code)


def tasks_in(root: Path) -> Callable[..., Callable[[Command], Task[Any]]]:
    """`@command(OPTION, …)` for the project at root: the task takes those options, in order."""

    def checked(values: dict[Option[Any], Any]) -> Given:
        """The task's arguments, and its versions file parsed before the command's modules load
        (they take most of a refusal's time): bad input is refused at once, exit 2."""
        given = Given(values, root)
        for option in READ_FIRST:
            if option in values:
                given.project.load(given[option])
        return given

    def command(*options: Option[Any]) -> Callable[[Command], Task[Any]]:
        def make(fn: Command) -> Task[Any]:
            def body(c: Context, **typed: Any) -> None:  # no option is positional: all named
                run(lambda: fn(checked({o: o.value(typed[o.name]) for o in options})))

            required = inspect.Parameter.empty
            body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
                + [
                    inspect.Parameter(
                        o.name,
                        inspect.Parameter.POSITIONAL_OR_KEYWORD,
                        default=required if o.required else o.default,
                    )
                    for o in options
                ]
            )
            body.__name__ = body.__qualname__ = fn.__name__
            body.__module__ = fn.__module__
            # Every task's --help ends with the exit codes scripts can act on.
            body.__doc__ = f"{fn.__doc__}\n\n{exit_codes_text()}"
            made: Task[Any] = task(
                help={o.name: o.help for o in options},
                iterable=[o.name for o in options if o.repeatable],
                positional=[],  # a value is always named: `invoke build --help` shows help
                klass=_Task,
            )(body)
            return made

        return make

    return command
