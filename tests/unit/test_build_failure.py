"""Whose fault a failed `podman build` is, from the lines podman 4.3 really prints (taken from
real builds: runc and chroot isolation, a runtime that cannot start, a full disk). The real
counterparts are tests/integration/test_host_failures.py and test_build_network.py."""

from __future__ import annotations

import signal

import pytest

from habana_tasks.core.errors import (
    HOST,
    HOST_FAILED,
    INPUTS,
    TARGET_FAILED,
    BuildStepError,
    CommandError,
    HostCommandError,
)
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.build_failure import classified

ARGV = ["podman", "build", "--network", "none", "/ctx"]
STEP = 'Error: building at STEP "RUN /bin/sh -c make KVERSION=6.1.0-56-amd64"'


def fault(returncode: int, *tail: str) -> CommandError:
    return classified(CommandError(ARGV, returncode, list(tail)))


@pytest.mark.parametrize(
    ("returncode", "tail", "cause"),
    [
        # The compiler's own refusal under runc (OCI) and under chroot isolation.
        (
            2,
            [
                'ERROR: modpost: "hwmon_device_register_with_info" [habanalabs.ko] undefined!',
                "make[1]: *** [Makefile:1234: modules] Error 2",
                f"{STEP}: while running runtime: exit status 2",
            ],
            'ERROR: modpost: "hwmon_device_register_with_info" [habanalabs.ko] undefined!',
        ),
        (
            1,
            [
                "error: the toolkit image has no depmod to copy into the image",
                "subprocess exited with status 1",
                f"{STEP}: exit status 1",
            ],
            "error: the toolkit image has no depmod to copy into the image",
        ),
        # A step's own "Permission denied" (a vendor script not executable) is the pair's.
        (
            126,
            [
                "/bin/sh: 1: ./configure: Permission denied",
                f"{STEP}: while running runtime: exit status 126",
            ],
            "/bin/sh: 1: ./configure: Permission denied",
        ),
        # runc reports a step program that does not exist as a failure to create the container.
        (
            1,
            [
                "error running container: from /usr/bin/runc creating container for "
                '[/bin/nonexistent]: time="2026-12-02T21:15:40Z" level=error msg="runc create '
                'failed: unable to start container process: exec: \\"/bin/nonexistent\\": '
                'stat /bin/nonexistent: no such file or directory"',
                ": exit status 1",
                'Error: building at STEP "RUN /bin/nonexistent": while running runtime: '
                "exit status 1",
            ],
            "stat /bin/nonexistent: no such file or directory",
        ),
    ],
)
def test_a_step_whose_own_command_failed_is_the_pairs(
    returncode: int, tail: list[str], cause: str
) -> None:
    error = fault(returncode, *tail)
    assert isinstance(error, BuildStepError) and error.origin == INPUTS
    assert error.exit_code == TARGET_FAILED
    assert error.message.startswith(f"podman build exited with {returncode}: ")
    assert cause in error.message


@pytest.mark.parametrize(
    ("returncode", "tail", "message"),
    [
        (
            125,
            ["Error: cannot set --network other than host with --isolation chroot"],
            "podman refused the build command: "
            "Error: cannot set --network other than host with --isolation chroot",
        ),
        (
            125,
            ['Error: failed to parse "/etc/containers/containers.conf": toml: line 3: expected'],
            "podman refused the build command: Error: failed to parse "
            '"/etc/containers/containers.conf": toml: line 3: expected',
        ),
        (
            1,
            [
                "STEP 3/3: RUN make",
                "error running container: from /tmp/broken creating container for [/bin/sh -c "
                "make]: this runtime cannot start containers",
                ": exit status 1",
                'Error: building at STEP "RUN make": while running runtime: exit status 1',
            ],
            "the container runtime could not start a build step: "
            "this runtime cannot start containers",
        ),
        (
            2,
            [
                "cc1: fatal error: error writing to /tmp/ccX.s: No space left on device",
                "make[1]: *** [Makefile:1234: modules] Error 2",
                f"{STEP}: while running runtime: exit status 2",
            ],
            "the host's storage failed: "
            "cc1: fatal error: error writing to /tmp/ccX.s: No space left on device",
        ),
        (
            125,
            [
                "Error: committing container for step {...}: copying layers and metadata: "
                "writing blob: write /var/lib/containers/storage/x: no space left on device",
            ],
            "the host's storage failed: Error: committing container for step {...}: copying "
            "layers and metadata: writing blob: write /var/lib/containers/storage/x: no space "
            "left on device",
        ),
        (
            1,
            [
                'time="2026-12-02T21:38:06Z" level=error msg="reading system config '
                '\\"/tmp/bad.conf\\": decode configuration /tmp/bad.conf: toml: line 2: expected"',
            ],
            'podman cannot read its configuration: time="2026-12-02T21:38:06Z" level=error '
            'msg="reading system config \\"/tmp/bad.conf\\": decode configuration /tmp/bad.conf: '
            'toml: line 2: expected"',
        ),
        (
            125,
            [
                "Error: creating build container: mkdir /var/lib/containers/storage/overlay/l: "
                "permission denied"
            ],
            "the host's storage failed: Error: creating build container: mkdir "
            "/var/lib/containers/storage/overlay/l: permission denied",
        ),
        (
            1,
            [
                "gcc: fatal error: Killed signal terminated program cc1",
                "make[2]: *** [scripts/Makefile.build:250: habanalabs.o] Error 1",
                f"{STEP}: while running runtime: exit status 1",
            ],
            "the host ran out of memory: gcc: fatal error: Killed signal terminated program cc1",
        ),
        (
            1,
            ["Close_Fd sealing memfd copy: Device or resource busy", f"{STEP}: exit status 1"],
            "the container runtime failed: Close_Fd sealing memfd copy: Device or resource busy",
        ),
    ],
)
def test_a_failure_of_the_host_is_never_the_pairs(
    returncode: int, tail: list[str], message: str
) -> None:
    error = fault(returncode, *tail)
    assert isinstance(error, HostCommandError) and error.origin == HOST
    assert error.exit_code == HOST_FAILED
    assert error.message == message
    # The command line and the output tail still reach the log.
    assert error.details.startswith("command: podman build")


def test_a_build_stopped_by_a_signal_is_the_hosts() -> None:
    error = fault(-signal.SIGTERM, "STEP 3/4: RUN make")
    assert isinstance(error, HostCommandError)
    assert error.message.startswith("podman build was stopped by SIGTERM")


def test_a_podman_that_could_not_start_stays_the_hosts() -> None:
    """The process runner says it first (a missing tool); the build keeps that word."""
    missing = ProcessRunner()
    with pytest.raises(HostCommandError) as raised:
        missing.run(["/nonexistent/podman", "build", "."])
    assert classified(raised.value) is raised.value
    assert raised.value.message == "cannot start /nonexistent/podman: No such file or directory"
    assert raised.value.exit_code == HOST_FAILED
