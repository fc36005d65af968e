"""Whose fault a failed `podman build` is, decided from what podman printed, where it is seen.

Only a RUN step whose own command ran and exited non-zero is the pair's (the driver does not
compile against that kernel, the toolkit lacks a tool): its inputs decide it, and the failure
memory may keep it. Everything else is the host's and says nothing about the pair: podman
refusing its command line or configuration before any step ran, the container runtime unable to
start a step, storage that is full or read-only, podman missing, a signal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from habana_tasks.core.errors import BuildStepError, CommandError, HostCommandError
from habana_tasks.core.log_cause import cause_of

# podman's last word on a RUN step whose command exited (OCI runtimes add "while running
# runtime: "; chroot isolation does not).
RUN_STEP_EXITED = re.compile(
    r'^Error: building at STEP "RUN .*": (while running runtime: )?exit status \d+$'
)
# The runtime could not create the step's container; the reason follows the step's argv.
RUNTIME_FAILED = re.compile(r"^error running container: from \S+ creating container for \[")
# ... unless the step's program is what is missing (a toolkit without it: the pair's input).
PROGRAM_MISSING = re.compile(r"(?i)exec: .*no such file or directory|executable file .* not found")
STORAGE_FAILED = re.compile(
    r"(?i)no space left on device|disk quota exceeded|read-only file system"
)
# podman's own word (not a step's output) that it may not write or read what it needs.
PODMAN_DENIED = re.compile(r"(?i)^Error: (?!building at STEP).*permission denied")
# Memory the host could not give: the kernel's OOM killer ended the compiler, or podman.
MEMORY_FAILED = re.compile(
    r"(?i)cannot allocate memory|out of memory|killed signal terminated program"
)
# podman could not read its own configuration (containers.conf, storage.conf).
CONFIG_FAILED = re.compile(r"(?i)reading system config|failed to obtain podman configuration")
# The runtime's copy of its own binary into a sealed memfd can meet EBUSY while the host is
# busy (seen with chroot isolation): the runtime's failure, and the same build, run again, passes.
TRANSIENT_RUNTIME_FAILURES = ("sealing memfd copy: Device or resource busy",)


HOST_FAULTS = (
    (STORAGE_FAILED, "the host's storage failed"),
    (PODMAN_DENIED, "the host's storage failed"),
    (MEMORY_FAILED, "the host ran out of memory"),
    (CONFIG_FAILED, "podman cannot read its configuration"),
)


def runtime_reason(tail: Sequence[str]) -> str | None:
    """The runtime's own complaint ("error running container: … for [argv]: why"), if any."""
    for line in tail:
        if RUNTIME_FAILED.match(line.strip()):
            return line.strip().rsplit("]: ", 1)[-1]
    return None


def runtime_busy(error: CommandError) -> bool:
    """The runtime failed for a reason of the moment: the same build, run again, may pass."""
    return error.returncode > 0 and any(
        signature in line for line in error.tail for signature in TRANSIENT_RUNTIME_FAILURES
    )


def host_fault(error: CommandError) -> HostCommandError | None:
    """A failure of any podman command that is the host's whatever the command: storage that
    is full, read-only or not podman's to write, memory, a configuration podman cannot read, a
    podman that could not be started (said by the process runner)."""
    if isinstance(error, HostCommandError):  # known already (a tool that could not start)
        return error
    lines = [line.strip() for line in error.tail]
    for pattern, what in HOST_FAULTS:
        if said := [line for line in lines if pattern.search(line)]:
            return HostCommandError(f"{what}: {said[0][-200:]}", error)
    return None


def classified(error: CommandError) -> CommandError:
    """The same failure as the pair's (BuildStepError) or the host's (HostCommandError)."""
    lines = [line.strip() for line in error.tail]
    reason = runtime_reason(lines)
    if error.returncode < 0:
        return HostCommandError(error.message, error)
    if host := host_fault(error):
        return host
    if runtime_busy(error):
        return HostCommandError(f"the container runtime failed: {cause_of(lines)}", error)
    if reason is not None and not PROGRAM_MISSING.search(reason):
        return HostCommandError(
            f"the container runtime could not start a build step: {reason[:200]}", error
        )
    if reason is not None or any(RUN_STEP_EXITED.match(line) for line in lines):
        why = reason or cause_of(lines)
        return BuildStepError(f"podman build exited with {error.returncode}: {why}", error)
    return HostCommandError(f"podman refused the build command: {cause_of(lines)}", error)
