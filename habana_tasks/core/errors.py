"""Typed errors and the failure record: each error class carries the exit code the command
line ends with (the table is in README.md and every task's --help)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import tempfile
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from habana_tasks.core.log_cause import cause_of

# Exit codes scripts can act on; one per class of outcome.
OK = 0
FAILED = 1  # a failure of no class below (e.g. a command that failed outside any target)
BAD_INPUT = 2  # an argument, the versions file or a local file: fix it; nothing was done
TARGET_FAILED = 3  # a target failed its build, checks, load test, push or verification
UNKNOWN_STATE = 4  # a registry or the network could not answer; nothing was decided on it
NOT_READY = 5  # preflight's answer is no: a kernel x driver lacks a current image
HOST_FAILED = 6  # the host failed (podman, the container runtime, storage, a tool): no pair's fault
INTERNAL_ERROR_CODE = 70  # a bug: EX_SOFTWARE (sysexits.h)
INTERRUPTED = 130  # Ctrl-C; every child process stopped, no tag moved
TERMINATED = 143  # SIGTERM, handled like Ctrl-C
EXIT_CODES = (
    (OK, "done: every target built, up to date or ready"),
    (FAILED, "a failure of no class below"),
    (BAD_INPUT, "bad input (argument, versions file, local file); nothing was done"),
    (TARGET_FAILED, "a target failed its build, checks, load test, push or verification"),
    (UNKNOWN_STATE, "a registry or the network could not answer; retry later"),
    (NOT_READY, "preflight: a kernel x driver lacks a current, load-tested image"),
    (HOST_FAILED, "the host failed (podman, container runtime, storage, a tool); fix it, retry"),
    (INTERNAL_ERROR_CODE, "internal error (a bug; the traceback is in a file)"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
    (TERMINATED, "terminated (SIGTERM)"),
)


# Whose fault a failure is. Only a failure the pair's inputs determine (the driver does not
# compile against the kernel, a check or the load test refuses the image) says anything about
# the next run with the same inputs; one of the host says nothing about the pair. "" is neither
# (a registry that refused a push, a digest that differs after it).
INPUTS = "inputs"
HOST = "host"


def exit_codes_text() -> str:
    """The table for --help: one line per code."""
    return "\n".join(["Exit codes:", *(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)])


class HabanaError(Exception):
    """Base of every error this tool reports as a one-line message; `details`, when there are
    some, follow it on the terminal and in the job's log. `transient`: retrying later, with
    nothing changed, may succeed (a registry or network that could not answer)."""

    exit_code = FAILED
    transient = False
    origin = ""  # INPUTS, HOST or neither: see above

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        transient: bool | None = None,
        origin: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if transient is not None:
            self.transient = transient
        if origin is not None:
            self.origin = origin

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} (hint: {self.hint})"

    @property
    def details(self) -> str | None:
        """More than the one line, when there is more to say (a command's full line and tail)."""
        return None


class ConfigError(HabanaError):
    """versions.toml (or a command-line argument) is invalid; lists every problem at once."""

    exit_code = BAD_INPUT

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(HabanaError):
    """A command-line argument names nothing the configuration knows."""

    exit_code = BAD_INPUT


class RegistryError(HabanaError):
    """A registry could not answer a question definitively (network, auth, server error)."""

    exit_code = UNKNOWN_STATE
    transient = True


class ManifestUnknown(RegistryError):
    """The registry said, authenticated, that this manifest or repository does not exist: a
    definite answer (a wrong reference), not a state to retry."""

    exit_code = FAILED
    transient = False


class TransientHTTPError(HabanaError):
    """Retries ran out (or the deadline passed) on a transient failure."""

    exit_code = UNKNOWN_STATE
    transient = True


class BodyError(TransientHTTPError):
    """A response body was refused while it arrived; never retried (the same server would
    send the same body)."""


class BodyDeadlineError(BodyError):
    """A response body was still arriving when its deadline passed."""


class BodyTooSlowError(BodyError):
    """A response body arrived below the rate floor for the whole window (a trickling server)."""


class BodyTooLargeError(BodyError):
    """A response body was larger than the bound for what it is (a manifest, a package)."""

    transient = False  # the same server would send the same body


class DigestMismatchError(RegistryError):
    """A registry body does not hash to the digest it was served under."""


class DriverPackageError(HabanaError):
    """A vendor package could not be fetched or does not hold what the build needs."""


class CommandError(HabanaError):
    """An external command failed. The message is one line (command, exit status or signal,
    the line that says why); `details` adds the full command line, quoted, and the last lines
    of its output, for the log and the terminal."""

    DETAIL_LINES = 10

    def __init__(self, argv: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = list(tail)
        status = f"exited with {returncode}"
        if returncode < 0:
            with contextlib.suppress(ValueError):
                status = f"was stopped by {signal.Signals(-returncode).name}"
        super().__init__(f"{shlex.join(self.argv[:2])} {status}: {cause_of(self.tail)}")

    @property
    def details(self) -> str:
        last = [line for line in self.tail if line.strip()][-self.DETAIL_LINES :]
        return "\n".join(
            [f"command: {shlex.join(self.argv)}", "last lines:", *(f"  {line}" for line in last)]
        )


class CommandTimeout(CommandError):
    """A command outlived its deadline and was killed."""


class ClassifiedCommandError(CommandError):
    """A failed command once it is known whose fault it is: a one-line message that says so,
    the command line and output tail kept for the log."""

    def __init__(self, message: str, error: CommandError) -> None:
        super().__init__(error.argv, error.returncode, error.tail)
        self.message = message


class BuildStepError(ClassifiedCommandError):
    """A build step's own command ran and failed (the driver does not compile against the
    kernel, the toolkit lacks a tool): the pair's inputs decide it."""

    exit_code = TARGET_FAILED
    origin = INPUTS


class HostCommandError(ClassifiedCommandError):
    """A command failed for a reason of the host, said first: podman refusing its command line
    or configuration, the container runtime unable to start a step, storage, a missing tool."""

    exit_code = HOST_FAILED
    origin = HOST


class CheckError(HabanaError):
    """A built image failed a check; it must not be published."""

    exit_code = TARGET_FAILED
    origin = INPUTS


class UnverifiedError(HabanaError):
    """A published image did not verify: nothing naming it is written."""

    exit_code = TARGET_FAILED


class HostError(HabanaError):
    """The host failed, not the pair, where no command's output says so (a qemu that cannot
    run, a guest that never reached /init): HostCommandError's kin."""

    exit_code = HOST_FAILED
    origin = HOST


class Interrupted(HabanaError):
    """The user pressed Ctrl-C; every child process was stopped, no tag was moved."""

    exit_code = INTERRUPTED
    word = "interrupted"

    def __init__(
        self, message: str, results: Sequence[object] = (), report: Path | None = None
    ) -> None:
        super().__init__(message)
        # What each target came to (JobResult records) and where report.json holds them.
        self.results = list(results)
        self.report = report


class Terminated(Interrupted):
    """SIGTERM (timeout, systemd, Kubernetes, CI cancellation): handled exactly like Ctrl-C."""

    exit_code = TERMINATED
    word = "terminated"


@dataclass(frozen=True)
class Failure:
    """What went wrong for one target or one input, from the boundary that saw it to the
    summary and report.json: the step, why (one line), the input concerned, and whether
    retrying later with nothing changed may succeed."""

    step: str  # "resolve", "registry state", "build", "check", "load test", "push", "delete" ...
    why: str
    subject: str = ""  # the input: an image reference, a package, a tag
    transient: bool = False
    origin: str = ""  # INPUTS (the pair's own), HOST (the environment's) or neither

    def __str__(self) -> str:
        return f"{self.subject}: {self.why}" if self.subject else self.why

    @classmethod
    def of(cls, step: str, exc: HabanaError, subject: str = "") -> Failure:
        return cls(step, str(exc), subject, exc.transient, exc.origin)


def combined(failures: Sequence[Failure]) -> Failure:
    """Several failures of one target as one record: transient only if every part is, of an
    origin only if every part is."""
    if len(failures) == 1:
        return failures[0]
    text = "; ".join(dict.fromkeys(str(f) for f in failures))
    origins = {f.origin for f in failures}
    origin = origins.pop() if len(origins) == 1 else ""
    return Failure(failures[0].step, text, "", all(f.transient for f in failures), origin)


def exit_code_for(failures: Iterable[Failure | None]) -> int:
    """A run's exit code from its targets' failures: a definite failure of a target outranks
    a failure of the host, which outranks an unknown (retrying cannot help until it is fixed)."""
    found = [f for f in failures if f is not None]
    if not found:
        return OK
    if any(not f.transient and f.origin != HOST for f in found):
        return TARGET_FAILED
    return HOST_FAILED if any(f.origin == HOST for f in found) else UNKNOWN_STATE


def internal_error(exc: BaseException) -> str:
    """The one line a bug ends with; the traceback goes to a file the line names."""
    with tempfile.NamedTemporaryFile(
        "w", prefix="habana-ai-driver-", suffix=".traceback", delete=False
    ) as out:
        traceback.print_exception(exc, file=out)
    return (
        f"internal error: {type(exc).__name__}: {str(exc)[:200]} "
        f"(a bug; the traceback is in {out.name})"
    )
