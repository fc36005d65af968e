"""The one place that starts external processes.

Every command is an argv list with stdin closed, in its own process group (so Ctrl-C stops the whole
tree), its output streamed line by line to a callback and its tail kept for the error message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from habana_tasks.core import user_session
from habana_tasks.core.errors import (
    CommandError,
    CommandTimeout,
    HostCommandError,
    Interrupted,
    Terminated,
)

LineSink = Callable[[str], None]
Item = TypeVar("Item")
Result = TypeVar("Result")
TAIL_LINES = 40
TERMINATE_GRACE_SECONDS = 5.0
# kmod's modinfo/depmod/modprobe live in /sbin, which an ordinary user's PATH often lacks.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# Secrets no child inherits: cosign's key password (given to the cosign call that signs, and
# to no other), and the keys the library workflow receives as secrets (written to 0600 files
# before the tool runs; should a step leave them set, podman, skopeo and qemu still never see them).
NOT_INHERITED = ("COSIGN_PASSWORD", "SIGNING_KEY", "COSIGN_KEY")


class TerminationSignal(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds exactly like Ctrl-C."""


def _raise_termination(signum: int, frame: object) -> None:
    raise TerminationSignal


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM stops children and moves no tag, as Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, _raise_termination)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(exc: KeyboardInterrupt) -> type[Interrupted]:
    """The error (and exit code) an interrupt ends a run with: 143 for SIGTERM, else 130."""
    return Terminated if isinstance(exc, TerminationSignal) else Interrupted


def find_tool(name: str) -> str | None:
    """The full path of a command: PATH first, then the system directories."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SYSTEM_DIRS])
    return shutil.which(name, path=path)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child, in the C locale: the product parses what podman,
    openssl, kmod and coreutils print (causes, versions, symbols), so a user's language must not
    change a decision. LANGUAGE is dropped too (gettext prefers it to LC_ALL elsewhere), and so
    is a secret the user set for one tool: only the call that passes it in `extra` gets it. An
    ordinary user's children share one runtime directory and storage driver (user_session)."""
    session = user_session.current()
    dropped = ("LANGUAGE", *NOT_INHERITED, *session.unset)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["LC_ALL"] = "C"
    env.update(session.environment)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Completed:
    """What a finished command left: exit code, the lines it printed (when kept) and its tail."""

    returncode: int
    output: tuple[str, ...]
    tail: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.output)


class ProcessRunner:
    """Runs commands and remembers the live ones so that an interrupt can stop them all."""

    def __init__(self) -> None:
        self._live: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

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
        """Run argv to completion, streaming each output line (stdout and stderr merged)."""
        argv = [str(a) for a in argv]
        # Messages keep the command as given; only the executable is resolved.
        resolved = argv if "/" in argv[0] else [find_tool(argv[0]) or argv[0], *argv[1:]]
        if self._stopping.is_set():
            raise CommandError(argv, -signal.SIGINT, ["not started: interrupted"])
        full_env = child_environment(env)
        try:
            proc = subprocess.Popen(
                resolved,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
                cwd=cwd,
                text=True,
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:  # a missing or unusable tool: the host's, whatever the inputs
            said = f"cannot start {argv[0]}: {exc.strerror}"
            raise HostCommandError(said, CommandError(argv, 127, [said])) from exc
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        kept: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                if keep_output:
                    kept.append(line)
                if on_line is not None:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        with self._lock:
            self._live.add(proc)
            # terminate_all may have taken its list between the check above and now.
            stopped_meanwhile = self._stopping.is_set()
        reader.start()
        try:
            if stopped_meanwhile:
                _terminate(proc)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(proc)
            reader.join()
            raise CommandTimeout(
                argv, -signal.SIGKILL, [*tail, f"killed after {timeout:g} s"]
            ) from None
        except BaseException:
            _terminate(proc)
            raise
        finally:
            with self._lock:
                self._live.discard(proc)
        reader.join()
        done = Completed(proc.returncode, tuple(kept), tuple(tail))
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, list(tail))
        return done

    @property
    def stopping(self) -> bool:
        """Stopped by terminate_all: a command failing now failed because it was stopped."""
        return self._stopping.is_set()

    def terminate_all(self) -> None:
        """Stop every running command (and its children) and refuse to start new ones."""
        self._stopping.set()
        with self._lock:
            live = list(self._live)
        for proc in live:
            _terminate(proc)


def in_parallel(
    run: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    runner: ProcessRunner | None,
    each: Callable[[Result], None] | None = None,
) -> list[Result]:
    """`run` over the items, `workers` at a time; the results in the items' order, each given
    to `each` as soon as the caller has it. Interrupted (or failing) at any point, submitting
    included, the items not started are cancelled and the runner's commands stopped before the
    exception goes on: leaving the pool waits for its workers, which wait for those commands."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="worker") as pool:
        futures: list[Future[Result]] = []
        try:
            for item in items:
                futures.append(pool.submit(run, item))
            results = []
            for future in futures:
                results.append(future.result())
                if each is not None:
                    each(results[-1])
            return results
        except BaseException:
            for future in futures:
                future.cancel()
            if runner is not None:
                runner.terminate_all()
            raise


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not gone after a grace period; then
    wait until every process the command had started is gone too.

    A container runtime puts a build's RUN step in its own session (runc: `runc init`, then the
    step's shell and make), out of reach of the group signal; podman stops it as it exits, but
    runc may still be cleaning up after podman has gone. "Stopped" is only true once they have
    gone, under every isolation, so they are remembered before the signal and waited for."""
    if proc.poll() is not None:
        return
    tree = ProcessTree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
    tree.wait_gone(TERMINATE_GRACE_SECONDS)


# Long-lived helpers podman shares between commands (rootless podman's pause process): never
# part of one command's work, so never stopped with it.
SHARED_HELPERS = frozenset(("catatonit", "podman pause"))
POLL_SECONDS = 0.05


def _running(proc: psutil.Process) -> bool:
    """Still there and not a zombie (a zombie has ended; only its parent's wait is left)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessTree:
    """The processes below a root pid. psutil's Process knows its start time, so a reused pid is
    never mistaken for one of them; those reparented when their parent ends stay remembered, and
    children they start later join as they are seen."""

    def __init__(self, root: int) -> None:
        try:
            self.known = {psutil.Process(root)}
        except psutil.Error:
            self.known = set()
        self.root = root
        self.refresh()

    def refresh(self) -> None:
        """Add the children of every remembered process still running, to a fixed point, from
        one pass over the process table (a shared helper and what runs under it are left out)."""
        by_parent: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid", "name"]):
            if proc.info["name"] not in SHARED_HELPERS:
                by_parent.setdefault(proc.info["ppid"], []).append(proc)
        todo = [p.pid for p in self.known if _running(p)]
        while todo:
            for child in by_parent.get(todo.pop(), []):
                if child not in self.known:
                    self.known.add(child)
                    todo.append(child.pid)

    def alive(self) -> list[psutil.Process]:
        self.refresh()
        return [p for p in self.known if p.pid != self.root and _running(p)]

    def wait_gone(self, grace: float) -> None:
        """Wait up to grace seconds for every remembered process to end, then SIGKILL the
        rest and wait for them as long again (a killed process goes within moments; one in
        uninterruptible sleep cannot be helped)."""
        for kill in (False, True):
            if kill:
                for proc in self.alive():
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            deadline = time.monotonic() + grace
            while (left := self.alive()) and time.monotonic() < deadline:
                psutil.wait_procs(left, timeout=POLL_SECONDS)
            if not left:
                return
