from __future__ import annotations

import threading
import time

import pytest

from habana_tasks.errors import CommandError, CommandTimeout
from habana_tasks.process import ProcessRunner


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


def test_missing_program_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="cannot start no-such-program"):
        ProcessRunner().run(["no-such-program-xyz"])


def test_timeout_kills_the_whole_process_group() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        ProcessRunner().run(["sh", "-c", "sleep 30 & echo $!; wait"], timeout=0.5, keep_output=True)
    assert time.monotonic() - started < 10
    child = int(info.value.tail[0])
    time.sleep(0.2)
    assert not alive(child)
    assert info.value.tail[-1] == "killed after 0.5 s"


def test_terminate_all_stops_running_commands_and_refuses_new_ones() -> None:
    runner = ProcessRunner()
    errors: list[CommandError] = []

    def run() -> None:
        try:
            runner.run(["sleep", "30"])
        except CommandError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    runner.terminate_all()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors[0].returncode < 0
    with pytest.raises(CommandError, match="interrupted"):
        runner.run(["true"])


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
