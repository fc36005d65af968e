from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import pytest

from habana_tasks.core import process
from habana_tasks.core.errors import HOST, CommandError, CommandTimeout, HostCommandError
from habana_tasks.core.process import NOT_INHERITED, ProcessRunner
from tests.conftest import require, require_tools


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lines_stream_to_the_callback_and_stdin_is_closed() -> None:
    seen: list[str] = []
    done = ProcessRunner().run(
        ["sh", "-c", "echo one; echo two >&2; cat; echo three"],
        on_line=seen.append,
        keep_output=True,
    )
    assert seen == ["one", "two", "three"]
    assert done.text == "one\ntwo\nthree"


def test_failure_keeps_the_tail_in_the_error() -> None:
    with pytest.raises(CommandError) as info:
        ProcessRunner().run(["sh", "-c", "for i in $(seq 1 100); do echo line$i; done; exit 3"])
    assert info.value.returncode == 3
    assert info.value.tail[-1] == "line100" and len(info.value.tail) == 40
    assert str(info.value) == "sh -c exited with 3: line100"


def test_missing_program_is_the_hosts_command_error() -> None:
    with pytest.raises(HostCommandError, match=r"^cannot start no-such-program") as raised:
        ProcessRunner().run(["no-such-program-xyz"])
    assert raised.value.origin == HOST and raised.value.returncode == 127


def test_timeout_kills_the_whole_process_group() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        ProcessRunner().run(["sh", "-c", "sleep 30 & echo $!; wait"], timeout=0.5, keep_output=True)
    assert time.monotonic() - started < 10
    child = int(info.value.tail[0])
    assert not alive(child)  # gone when the error is raised, not some time later
    assert info.value.tail[-1] == "killed after 0.5 s"


def run_in_thread(
    runner: ProcessRunner, argv: list[str]
) -> tuple[threading.Thread, list[str], list[CommandError], threading.Event]:
    """Starts argv through runner in a thread; the event is set once it printed its first line
    (so the command is known to run, not merely to be about to)."""
    lines: list[str] = []
    errors: list[CommandError] = []
    started = threading.Event()

    def on_line(line: str) -> None:
        lines.append(line)
        started.set()

    def run() -> None:
        try:
            runner.run(argv, on_line=on_line)
        except CommandError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10), "the command never started"
    return thread, lines, errors, started


def test_terminate_all_stops_running_commands_and_refuses_new_ones() -> None:
    runner = ProcessRunner()
    thread, _, errors, _ = run_in_thread(runner, ["sh", "-c", "echo running; exec sleep 30"])
    runner.terminate_all()
    thread.join(timeout=10)
    assert not thread.is_alive()
    # Stopped by the signal while it ran, which a refusal to start (SIGINT) would not be.
    assert errors[0].returncode == -signal.SIGTERM, errors
    with pytest.raises(CommandError, match="not started: interrupted") as refused:
        runner.run(["true"])
    assert refused.value.returncode == -signal.SIGINT


class InterruptedWhileSubmitting(Sequence[int]):
    """Two items; reaching the second (the pool is still being given work) raises an interrupt
    once the first item's command runs, as a Ctrl-C arriving at that moment does."""

    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if index == 1:
            assert self.started.wait(10)
            raise KeyboardInterrupt
        if isinstance(index, slice) or index > 1:
            raise IndexError(index)
        return index


def test_an_interrupt_while_work_is_handed_out_stops_the_commands_already_running() -> None:
    """Leaving a pool waits for its workers: the commands are stopped first, or it would wait
    for a command nobody stops."""
    runner, started = ProcessRunner(), threading.Event()
    outcomes: list[BaseException | str] = []

    def work(item: int) -> None:
        def seen(line: str) -> None:
            started.set()

        try:
            runner.run(["sh", "-c", "echo running; exec sleep 30"], on_line=seen)
            outcomes.append("ran to its end")
        except CommandError as exc:
            outcomes.append(exc)

    with pytest.raises(KeyboardInterrupt):
        process.in_parallel(work, InterruptedWhileSubmitting(started), 2, runner)
    (stopped,) = outcomes
    assert isinstance(stopped, CommandError) and stopped.returncode == -signal.SIGTERM, outcomes


def test_terminate_all_returns_only_once_processes_outside_the_group_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a container runtime does: the work runs in a session of its own (out of reach of the
    group signal) and ignores SIGTERM; stopping must wait for it, and kill it if it stays."""
    monkeypatch.setattr(process, "TERMINATE_GRACE_SECONDS", 0.5)
    runner = ProcessRunner()
    script = "setsid sh -c 'trap \"\" TERM; echo $$; exec sleep 30' & wait"
    thread, lines, _, _ = run_in_thread(runner, ["sh", "-c", script])
    outside = int(lines[0])
    assert alive(outside)
    runner.terminate_all()
    assert not alive(outside), "terminate_all returned while a started process still ran"
    thread.join(timeout=10)


def test_a_failed_build_is_reported_by_its_cause_not_its_wrapper() -> None:
    tail = [
        "  CC [M]  drivers/misc/habanalabs/common/hwmon.o",
        "  MODPOST drivers/misc/habanalabs/Module.symvers",
        'ERROR: modpost: "hwmon_device_register_with_info" '
        "[drivers/misc/habanalabs/habanalabs.ko] undefined!",
        "make[2]: *** [scripts/Makefile.modpost:126: Module.symvers] Error 1",
        "make[1]: *** [Makefile:1990: modpost] Error 2",
        'Error: building at STEP "RUN make -j2": while running runtime: exit status 2',
    ]
    error = CommandError(["podman", "build", "--layers"], 2, tail)
    assert str(error) == (
        'podman build exited with 2: ERROR: modpost: "hwmon_device_register_with_info" '
        "[drivers/misc/habanalabs/habanalabs.ko] undefined!"
    )
    assert str(CommandError(["qemu"], -9, ["booting"])).startswith("qemu was stopped by SIGKILL")
    # A step's echoed command can hold the word "error" itself: the step line is not the cause.
    step = [
        '[1/2] STEP 11/15: RUN for m in $MODULES; do echo "error: $m.ko was not built"; done',
        "error: habanalabs_ib.ko was not built (it is listed in modules)",
        'Error: building at STEP "RUN for m in $MODULES; ...": exit status 1',
    ]
    assert str(CommandError(["podman", "build"], 1, step)) == (
        "podman build exited with 1: "
        "error: habanalabs_ib.ko was not built (it is listed in modules)"
    )


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A user's environment in German: a de_DE.UTF-8 locale compiled for the test (packages
    locales and libc-l10n), proven to translate coreutils' messages before it is used."""
    require_tools("localedef")
    locales = tmp_path_factory.mktemp("locales")
    made = subprocess.run(
        ["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")],
        capture_output=True,
        text=True,
        check=False,
    )
    require(made.returncode == 0, f"localedef de_DE.UTF-8 ({made.stderr.strip()[:120]})")
    env = {"LOCPATH": str(locales), "LANG": "de_DE.UTF-8", "LANGUAGE": "de", "LC_ALL": ""}
    plain = subprocess.run(
        ["ls", "/nonexistent"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    require("nicht gefunden" in plain.stderr, f"German messages (libc-l10n): {plain.stderr!r}")
    return env


def test_a_child_speaks_english_whatever_the_users_locale(
    german: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The cause of a failure is picked from the command's output by its English words; under
    the user's German locale the same decision must be made."""
    for key, value in german.items():
        monkeypatch.setenv(key, value)
    script = f"cp /nonexistent {tmp_path}/x; echo finished; exit 1"
    with pytest.raises(CommandError) as info:
        ProcessRunner().run(["sh", "-c", script])
    assert str(info.value) == (
        "sh -c exited with 1: cp: cannot stat '/nonexistent': No such file or directory"
    )


def test_no_child_inherits_a_secret_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Canaries in each secret variable: none reaches a child's environment, except the one a
    call passes in itself (cosign's password, to the cosign call that signs)."""
    for i, name in enumerate(NOT_INHERITED):
        monkeypatch.setenv(name, f"canary-{i}-secret")
    seen = ProcessRunner().run(["env"], keep_output=True).text
    assert "canary-" not in seen
    given = ProcessRunner().run(["env"], keep_output=True, env={"COSIGN_PASSWORD": "x1"}).text
    assert "COSIGN_PASSWORD=x1" in given.splitlines() and "canary-" not in given
