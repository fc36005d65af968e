"""Pure planning: targets + resolved inputs + registry state -> what to do for each, and why."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from habana_tasks import labels
from habana_tasks.config import BuildTarget
from habana_tasks.labels import TargetInputs
from habana_tasks.registry import Existence, RemoteImage


class Action(enum.StrEnum):
    BUILD = "build"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class BuildJob:
    """One target's decision. BUILD and SKIP carry the inputs; FAIL carries only the reason."""

    target: BuildTarget
    action: Action
    reason: str
    inputs: TargetInputs | None = None
    fingerprint: str | None = None
    remote_digest: str | None = None
    forced: bool = False
    load_tested: bool = False


def plan_job(
    target: BuildTarget,
    inputs: TargetInputs | str,
    remote: RemoteImage,
    force: bool = False,
    require_load_test: bool = False,
) -> BuildJob:
    if isinstance(inputs, str):
        return BuildJob(target, Action.FAIL, inputs)
    current = labels.fingerprint(target, inputs)
    if remote.existence is Existence.UNKNOWN:
        # Unknown is neither absent nor present: building could overwrite a good image.
        return BuildJob(
            target, Action.FAIL, f"registry state unknown, not building: {remote.error}", inputs
        )
    if force:
        return BuildJob(target, Action.BUILD, "forced", inputs, current, remote.digest, forced=True)
    if remote.existence is Existence.ABSENT:
        return BuildJob(target, Action.BUILD, "not in the repository", inputs, current)
    load_tested = remote.labels.get(labels.LOAD_TESTED) == "true"
    if remote.labels.get(labels.FINGERPRINT) == current:
        if require_load_test and not load_tested:
            return BuildJob(
                target, Action.BUILD, "stale: never load-tested", inputs, current, remote.digest
            )
        return BuildJob(
            target,
            Action.SKIP,
            f"up to date ({labels.short_digest(current)})",
            inputs,
            current,
            remote.digest,
            load_tested=load_tested,
        )
    changed = labels.changed_inputs(target, inputs, remote.labels)
    if labels.FINGERPRINT not in remote.labels:
        why = "the image has no fingerprint label"
    elif changed:
        why = ", ".join(changed) + " changed"
    else:
        why = "build recipe changed"
    return BuildJob(target, Action.BUILD, f"stale: {why}", inputs, current, remote.digest)


def plan(
    targets: Sequence[BuildTarget],
    inputs: Mapping[str, TargetInputs | str],
    remote: Mapping[str, RemoteImage],
    force: bool = False,
    require_load_test: bool = False,
) -> tuple[BuildJob, ...]:
    return tuple(
        plan_job(t, inputs[t.tag], remote[t.tag], force, require_load_test) for t in targets
    )
