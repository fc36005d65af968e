"""How each target of a run ended: the record the pipeline returns, the reporter shows, the
summary prints and report.json holds."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from habana_tasks.build.plan import Action
from habana_tasks.core.errors import Failure


class JobStatus(enum.StrEnum):
    """How a target ended. PLANNED is a dry run's "would do"; SKIPPED a real run's "up to date"."""

    OK = "ok"
    PLANNED = "planned"
    SKIPPED = "skipped"
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
    load_test_seconds: float | None = None
    failure: Failure | None = None  # set exactly when the target failed

    def __post_init__(self) -> None:
        # The exit code is computed from failures: a failed result without one would exit 0.
        if (self.status is JobStatus.FAILED) != (self.failure is not None):
            raise ValueError(f"{self.tag}: status {self.status} with failure {self.failure}")

    @property
    def ok(self) -> bool:
        return self.status in (JobStatus.OK, JobStatus.PLANNED, JobStatus.SKIPPED)


def write_report(path: Path, records: Sequence[Any]) -> Path:
    """report.json: every record of a run (dataclasses), failures included as objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
    return path
