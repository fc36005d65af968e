"""How each target of a run ended: the record the pipeline returns, the reporter shows, the
summary prints and report.json holds."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from habana_tasks.build.compile import CompileRecord
from habana_tasks.build.plan import Action
from habana_tasks.core import local_files
from habana_tasks.core.errors import Failure, UsageError


class JobStatus(enum.StrEnum):
    """How a target ended. PLANNED is a dry run's "would do"; SKIPPED a real run's "up to date";
    HELD "failed before with the same inputs": no new failure, so not one for the exit code."""

    OK = "ok"
    PLANNED = "planned"
    SKIPPED = "skipped"
    HELD = "held"  # not built: its inputs failed before (build/failure_records)
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class JobResult:
    """How one target ended: what the plan said to do, and what came of it."""

    tag: str  # the target's image tag: <driver>-<kernel release>
    action: Action
    status: JobStatus
    detail: str
    digest: str | None = None
    seconds: float = 0.0
    log: str | None = None
    load_tested: bool = False
    load_test_kernel: str | None = None
    load_test_boot: str | None = None  # "secure-boot" or "plain"
    load_test_seconds: float | None = None
    failure: Failure | None = None  # set exactly when the target failed
    compiled: CompileRecord | None = None  # how the build got its compiled files

    def __post_init__(self) -> None:
        # The exit code is computed from failures: a failed result without one would exit 0.
        if (self.status is JobStatus.FAILED) != (self.failure is not None):
            raise ValueError(f"{self.tag}: status {self.status} with failure {self.failure}")

    @property
    def ok(self) -> bool:
        return self.status in (JobStatus.OK, JobStatus.PLANNED, JobStatus.SKIPPED, JobStatus.HELD)


def read_report(path: Path) -> list[JobResult]:
    """A build run's report.json, as write_report wrote it; anything else is named (exit 2)."""
    text = local_files.read_text(path, local_files.RUN_REPORT)
    try:
        entries = json.loads(text)
        if not isinstance(entries, list):
            raise TypeError(f"a JSON {type(entries).__name__}, expected a list of results")
        return [_result(entry) for entry in entries]
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path}: not a build run's report.json: {exc}") from None


def _result(entry: Any) -> JobResult:
    if not isinstance(entry, dict):
        raise TypeError(f"an entry is a JSON {type(entry).__name__}, expected an object")
    failure, compiled = entry.get("failure"), entry.get("compiled")
    fields = {
        **entry,
        "action": Action(entry["action"]),
        "status": JobStatus(entry["status"]),
        "failure": Failure(**failure) if isinstance(failure, dict) else None,
        "compiled": CompileRecord(**compiled) if isinstance(compiled, dict) else None,
    }
    result = JobResult(**fields)
    if not isinstance(result.tag, str) or not isinstance(result.detail, str):
        raise TypeError(f"{str(result.tag)[:80]!r}: tag and detail must be strings")
    if not isinstance(result.seconds, int | float) or isinstance(result.seconds, bool):
        raise TypeError(f"{result.tag[:80]!r}: seconds must be a number")
    if result.digest is not None and not isinstance(result.digest, str):
        raise TypeError(f"{result.tag[:80]!r}: digest must be a string")
    return result


def write_report(path: Path, records: Sequence[Any]) -> Path:
    """report.json: every record of a run (dataclasses), failures included as objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
    return path
