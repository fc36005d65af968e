"""pytest plugin: `--reliability-report PATH` writes docs/reliability.md from the run itself.

Tests of hostile inputs and faults carry `@pytest.mark.reliability("<area>", outcome=...)`; a
test may add
`record_property("outcome", "survived" | "failed closed" | "refused")` and
`record_property("seconds", s)`. The report counts, per area, what was tried, what ended right
(the test passed) and what ended wrong (it failed), and the slowest fail-closed time.
"""

from __future__ import annotations

import platform
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from habana_tasks.core.http_client import RetryPolicy

COMMAND = ".venv/bin/nox -s reliability"
AREAS = (
    "arguments",
    "local files",
    "bad versions files",
    "driver packages",
    "package servers",
    "registry faults",
    "secrets",
    "signals",
)


@dataclass
class Area:
    tried: int = 0
    right: int = 0
    wrong: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    slowest: tuple[float, str] = (0.0, "")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-report", default=None, help="write the reliability report")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(area): a hostile input or injected fault")
    path = config.getoption("--reliability-report")
    if path:
        config.pluginmanager.register(_Report(Path(path)), "reliability-report")


class _Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.areas: dict[str, Area] = {name: Area() for name in AREAS}
        self.started = datetime.now(UTC)

    @pytest.hookimpl
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        marker = item.get_closest_marker("reliability")
        if marker is not None:
            item.user_properties.append(("area", marker.args[0]))
            if "outcome" in marker.kwargs:  # a test's own record_property comes later and wins
                item.user_properties.append(("outcome", marker.kwargs["outcome"]))

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.when == "setup" and report.failed):
            return
        area_name = dict(report.user_properties).get("area")
        if not isinstance(area_name, str):
            return
        area = self.areas.setdefault(area_name, Area())
        area.tried += 1
        name = report.nodeid.split("::", 1)[-1]
        if report.passed:
            area.right += 1
        else:
            area.wrong.append(name)
        props = dict(report.user_properties)
        outcome = props.get("outcome")
        if isinstance(outcome, str):
            area.outcomes[outcome] += 1
        seconds = props.get("seconds")
        if isinstance(seconds, float) and outcome == "failed closed" and seconds > area.slowest[0]:
            area.slowest = (seconds, name)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.render())

    def render(self) -> str:
        lines = [
            "# Reliability",
            "",
            "Generated from one run of the hostile-input and fault-injection tests; do not edit.",
            f"Regenerate with `{COMMAND}`. Run of {self.started:%Y-%m-%d %H:%M} UTC, "
            f"Python {sys.version.split()[0]}, {platform.machine()}.",
            "",
            "| area | tried | right | wrong | outcomes | slowest fail-closed |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, area in self.areas.items():
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(area.outcomes.items())) or "-"
            slowest = f"{area.slowest[0]:.1f} s ({area.slowest[1]})" if area.slowest[1] else "-"
            lines.append(
                f"| {name} | {area.tried} | {area.right} | {len(area.wrong)} | {outcomes} "
                f"| {slowest} |"
            )
        wrong = [f"{n}: {t}" for n, a in self.areas.items() for t in a.wrong]
        cli = self.areas["bad versions files"]
        cli_runs = cli.outcomes.get(CLI_OUTCOME, 0)
        cli_wrong = len([t for t in cli.wrong if "command_line" in t])
        lines += [
            "",
            f"Wrong outcomes: {len(wrong)}.",
            *(f"- {w}" for w in wrong),
            "",
            f"Tracebacks: {cli_wrong} in {cli_runs + cli_wrong} refusals run through the command "
            "line (each checked for exit 2, the expected lines, and no traceback).",
            "",
            bounds(RetryPolicy()),
            "",
        ]
        return "\n".join(lines)


CLI_OUTCOME = "refused by the CLI, no traceback"


def bounds(policy: RetryPolicy) -> str:
    """The time bounds as the code sets them (RetryPolicy's defaults), not as text kept by hand."""
    worst = policy.deadline + policy.connect_timeout + policy.read_timeout
    return BOUNDS.format(
        attempts=policy.attempts,
        deadline=f"{policy.deadline:g}",
        connect=f"{policy.connect_timeout:g}",
        read=f"{policy.read_timeout:g}",
        worst=f"{worst:g}",
        download=f"{policy.download_deadline:g}",
        speed_limit=policy.speed_limit,
        speed_time=f"{policy.speed_time:g}",
        max_body=f"{policy.max_body >> 20} MiB",
    )


BOUNDS = """\
## What each area tries, and the bounds

- **arguments**: out-of-range, non-numeric, infinite and malformed values for every option
  (`tests/unit/test_arguments.py`), run through invoke's own parser with sockets and process
  starts trapped: each refused with exit 2 and one line naming the option and the value.
- **local files**: a FIFO without a writer, a character device, a directory, a socket and a
  file one byte over its bound, as each kind of file the tool reads (versions file, nodes JSON,
  certificate, key, auth file, netrc), a `file://` package that is a FIFO or a device: each
  refused by name within a watchdog, never read to its end or waited on.
- **bad versions files**: `tests/corpus/versions.py`, every file refused with exit 2 before any
  socket or process is opened, each expected problem named with file, key and value, every
  problem of a file reported at once; a sample through the command line, with no traceback.
- **driver packages**: good and broken vendor RPMs (payloads, dkms.conf, truncation, garbage).
- **package servers**: errors, truncation, trickling bodies (cut at the rate floor), oversized
  bodies, re-publication under the same URL.
- **registry faults**: a proxy in front of the real registry injects 5xx, 429 with Retry-After,
  resets, hangs, cut, trickling, malformed and non-JSON bodies, documents of the wrong JSON
  type (manifests, config blobs, labels, error bodies, token answers), oversized bodies, 401
  without a challenge, stripped and wrong digests, tampered blobs, refused logins, looping and
  cross-host pagination. "survived" means the plan
  made the same decision as without the fault; "failed closed" means the target failed (never
  built, never pushed) and named the registry.
- **secrets**: a canary password in the auth file and in `~/.netrc`, through a build behind a
  registry that demands a login: found only in the requests to that registry; never in argv,
  logs, report.json, labels, build arguments, image history or layers, nor at another host.
- **signals**: SIGINT and SIGTERM during a build (under every build isolation the host offers),
  a load test and a push: exit 130/143, no child process left (container processes included),
  the tag still on its old digest.

Time bounds (`habana_tasks/core/http_client.py`, `RetryPolicy`): a registry or token request gives
up after {attempts} attempts or {deadline} s, whichever comes first, each attempt with a {connect} s
connect and {read} s read timeout, so no registry answer holds a run longer than {worst} s; a
package download or a layer read gives up after {download} s plus at most one read timeout,
and any body slower than {speed_limit} bytes/s over {speed_time} s fails then; an API body is
refused past {max_body}. The tests use a shorter policy to prove the same bound quickly:
their "slowest fail-closed" time is measured against it."""
