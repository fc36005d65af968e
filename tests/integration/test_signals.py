"""Ctrl-C and SIGTERM (timeout, systemd, Kubernetes, CI cancellation) during a build, a load test
and a push: every child process stops, no tag moves, the exit code says which signal it was."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools import local_upstream
from habana_tasks.config import versions_file
from habana_tasks.core.process import ProcessRunner, find_tool
from habana_tasks.engine.isolation import ISOLATIONS, probe
from habana_tasks.registry.client import RegistryClient
from tests.conftest import ROOT, RecordProperty, invoke_argv, require_tools
from tests.integration.conftest import KERNELS, UpstreamFixture, route_through
from tests.registry_proxy import Faults, registry_proxy

pytestmark = [pytest.mark.integration, pytest.mark.reliability("signals")]

WAIT_SECONDS = 240.0
# A push is held at the proxy: blob uploads and the manifest (which is what moves a tag).
PUSH_WRITES = re.compile(r"^(PUT|PATCH) .*/blobs/uploads/|^PUT .*/manifests/")


def descendants(pid: int) -> dict[int, str]:
    """Every live process below pid, with its command name."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we read the table
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
        names[int(entry.name)] = name
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = names[child]
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# As from a terminal: a job started in the background by a non-interactive shell inherits SIGINT
# ignored, and Python then never turns Ctrl-C into an interrupt. This restores the default and
# execs the command (same process).
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


def wait_until(what: str, condition: object, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {what} within {WAIT_SECONDS:g} s:\n{log.read_text()}")


def offered_isolations() -> list[str]:
    """Every build isolation whose RUN step works on this host (each asked of podman itself),
    so that interrupts are proven under each one users of this host could get, not only the one
    the tool's probe would pick."""
    if find_tool("podman") is None:
        return ["chroot"]  # the test fails on the missing tool under CI, skips loudly elsewhere
    runner = ProcessRunner()
    return [flag for flag in ISOLATIONS if probe(runner, flag).flag == flag]


OFFERED = offered_isolations()
CASES = [
    *(
        pytest.param(signum, "build", isolation, id=f"{signum.name.lower()}-build-{isolation}")
        for isolation in OFFERED
        for signum in (signal.SIGINT, signal.SIGTERM)
    ),
    pytest.param(signal.SIGTERM, "load-test", None, id="sigterm-load-test"),
    pytest.param(signal.SIGTERM, "push", None, id="sigterm-push"),
]


def test_the_host_offers_chroot_isolation_at_least() -> None:
    require_tools("podman")
    assert "chroot" in OFFERED, OFFERED


@pytest.mark.parametrize(("signum", "stage", "isolation"), CASES)
def test_signal_stops_every_child_and_moves_no_tag(
    signum: signal.Signals,
    stage: str,
    isolation: str | None,
    test_upstream: UpstreamFixture,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    u, runner = test_upstream.upstream, test_upstream.runner
    repository = f"library/signal-{stage}-{signum.name.lower()}-{isolation or 'probed'}"
    faults = Faults(hold=PUSH_WRITES if stage == "push" else None)
    with registry_proxy(u.registry, faults) as proxy:
        plain = test_upstream.versions(
            tmp_path / "plain.toml", (KERNELS[0],), repository=repository
        )
        # The library is written through the proxy; its registry is the same real one.
        versions = route_through(plain, tmp_path / "versions.toml", "repository", u.registry, proxy)
        target = versions_file.load(versions).targets[0]
        # An older image already holds the tag: it must still hold it afterwards.
        old = f"{u.registry}/{repository}:{target.tag}"
        runner.run(["podman", "tag", local_upstream.LOCAL_BASE, old])
        runner.run(["podman", "push", "--quiet", "--tls-verify=false", old])
        registry = RegistryClient([u.registry, proxy])
        before = registry.inspect(target.image).digest
        assert before is not None

        cache = tmp_path / "cache"
        log = tmp_path / "output.log"
        argv = invoke_argv("build", "--kernel", target.kernel, "--versions", str(versions))
        if stage == "build":
            argv += ["--force", "--no-compile-cache"]  # make really runs
        if stage == "push":
            argv += ["--no-load-test"]  # the push is the subject
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*WITH_DEFAULT_SIGINT, *argv],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={
                    **{k: v for k, v in os.environ.items() if k != "BUILDAH_ISOLATION"},
                    "HABANA_CACHE_DIR": str(cache),
                    **({"HABANA_ISOLATION": isolation} if isolation else {}),
                },
            )
            conditions = {
                "build": lambda: {"make", "cc1", "gcc"} & set(descendants(proc.pid).values()),
                "load-test": lambda: any(
                    n.startswith("qemu-system") for n in descendants(proc.pid).values()
                ),
                "push": faults.held.is_set,
            }
            wait_until(f"{stage} in progress", conditions[stage], proc, log)
            children = descendants(proc.pid)
            assert children, "the signal must land while children run"
            sent = time.monotonic()
            proc.send_signal(signum)
            try:
                proc.wait(timeout=60)
            finally:
                proc.kill()
            seconds = time.monotonic() - sent

    output = log.read_text()
    word, code = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
    assert proc.returncode == code, output
    assert f"{word}: every build, load test and push was stopped" in output
    assert re.search(rf"│ {re.escape(target.tag)} .*{word}", output), output  # the summary
    left = {pid: name for pid, name in children.items() if alive(pid)}
    assert left == {}, f"still running after exit: {left}"
    assert subprocess.run(["pgrep", "-f", str(cache)], check=False).returncode == 1
    assert registry.inspect(target.image).digest == before
    record_property(
        "outcome", f"exit {code}, 0 children left, tag unchanged ({isolation or 'probed'})"
    )
    record_property("seconds", seconds)
