"""Pure planning: targets + resolved inputs + registry state -> what to do for each, and why."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from habana_tasks.build import labels
from habana_tasks.build.failure_records import FailureRecord
from habana_tasks.build.kernel_index import KernelIndex
from habana_tasks.build.labels import TargetInputs
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import INPUTS, Failure, HabanaError
from habana_tasks.registry.client import Existence, RemoteImage
from habana_tasks.trust.signature_check import Attached
from habana_tasks.verification.secure_boot import SECURE_BOOT

# The step a pair fails at when its driver package does not build for its kernel.
EXCLUDED = "driver package"


class Action(enum.StrEnum):
    BUILD = "build"
    SKIP = "skip"
    FAIL = "fail"
    # Pending, but the same inputs and tool failed before (build/failure_records): not rebuilt.
    HOLD = "hold"
    # Up to date, but the library's key has not signed (or attested) it: signed, not rebuilt.
    SIGN = "sign"


@dataclass(frozen=True)
class BuildJob:
    """One target's decision. BUILD and SKIP carry the inputs; FAIL carries the failure."""

    target: BuildTarget
    action: Action
    reason: str
    inputs: TargetInputs | None = None
    fingerprint: str | None = None
    remote_digest: str | None = None
    load_tested: bool = False
    load_test_boot: str | None = None  # the boot that proved the repository's image
    failure: Failure | None = None
    # The pair's failure record in the repository, if any (deleted once the pair is pushed).
    record: FailureRecord | None = None


def plan_job(
    target: BuildTarget,
    inputs: TargetInputs | Failure,
    remote: RemoteImage,
    force: bool = False,
    require_load_test: bool = False,
    require_secure_boot: bool = False,
) -> BuildJob:
    if isinstance(inputs, Failure):
        return BuildJob(target, Action.FAIL, str(inputs), failure=inputs)
    if refusal := inputs.exclusive.refusal(target.kernel, target.arch):
        why = f"driver {target.driver} is not built for {target.kernel}: {refusal}"
        failure = Failure(EXCLUDED, why, target.package_url, origin=INPUTS)
        return BuildJob(target, Action.FAIL, why, inputs, failure=failure)
    current = labels.fingerprint(target, inputs)
    if remote.existence is Existence.UNKNOWN:
        # Unknown is neither absent nor present: building could overwrite a good image.
        why = f"registry state unknown, not building: {remote.error}"
        transient = remote.failure.transient if remote.failure else True
        failure = Failure("registry state", why, transient=transient)
        return BuildJob(target, Action.FAIL, why, inputs, failure=failure)
    if force:
        return BuildJob(target, Action.BUILD, "forced", inputs, current, remote.digest)
    if remote.existence is Existence.ABSENT:
        return BuildJob(target, Action.BUILD, "not in the repository", inputs, current)
    boot = labels.load_test_boot(remote.labels)
    if remote.labels.get(labels.FINGERPRINT) == current:
        unproven = None
        if require_load_test and boot is None:
            unproven = "stale: never load-tested"
        elif require_load_test and require_secure_boot and boot != SECURE_BOOT:
            unproven = f"stale: load-tested by a {boot} boot, not {SECURE_BOOT}"
        if unproven:
            return BuildJob(target, Action.BUILD, unproven, inputs, current, remote.digest)
        return BuildJob(
            target,
            Action.SKIP,
            f"up to date ({labels.short_digest(current)})",
            inputs,
            current,
            remote.digest,
            load_tested=boot is not None,
            load_test_boot=boot,
        )
    changed = labels.changed_inputs(target, inputs, remote.labels)
    if labels.FINGERPRINT not in remote.labels:
        why = "the image has no fingerprint label"
    elif changed:
        why = ", ".join(changed) + " changed"
    else:
        why = "build recipe changed"
    return BuildJob(target, Action.BUILD, f"stale: {why}", inputs, current, remote.digest)


def recalled(job: BuildJob, record: FailureRecord | None, tool: str, retry: bool) -> BuildJob:
    """A pending job in the light of its pair's failure record: held when the same inputs and
    tool failed before, unless retried (--retry-failed, --force); else built as planned."""
    if record is None or job.action is not Action.BUILD or job.fingerprint is None:
        return job
    if not record.holds(job.fingerprint, tool):
        return replace(job, record=record)
    if retry:
        return replace(job, reason=f"{job.reason}; retrying: {record.line}", record=record)
    return replace(job, action=Action.HOLD, reason=record.line, record=record)


# The step a pair fails at when its kernel builds in a module of the image's.
BUILT_IN = "kernel's own module"


def replacing_words(replaced: Sequence[str]) -> str:
    """How the plan, status, preflight and the page say it."""
    return f"replaces the kernel's own {', '.join(replaced)}"


def replacing(job: BuildJob, index: KernelIndex | HabanaError) -> BuildJob:
    """A pending job whose kernel ships modules of the image's (or claiming its devices): the
    image records them (KMM removes them before loading the image's) and the plan says so; a
    kernel that builds one in cannot be served, and the pair is refused before building. An
    index the registry could not give fails the pair (transient as the fault was): building
    as if the kernel shipped nothing could leave its own driver on the nodes."""
    if job.action is not Action.BUILD or job.inputs is None:
        return job
    t = job.target
    if isinstance(index, HabanaError):
        why = f"the kernel's module index could not be read from its toolkit: {index}"
        unread = Failure(BUILT_IN, why, t.toolkit_image, transient=index.transient)
        return replace(job, action=Action.FAIL, reason=why, failure=unread)
    if built_in := index.built_in(t.modules):
        why = (
            f"{t.kernel} builds {', '.join(built_in)} into the kernel (modules.builtin): no "
            "module of that name can be loaded beside it, and KMM cannot remove it"
        )
        failure = Failure(BUILT_IN, why, t.toolkit_image, origin=INPUTS)
        return replace(job, action=Action.FAIL, reason=why, failure=failure)
    replaced = index.replaced(t.modules)
    if not replaced:
        return job
    inputs = replace(job.inputs, in_tree_replaced=replaced)
    reason = f"{job.reason}; {replacing_words(replaced)}"
    return replace(job, inputs=inputs, reason=reason)


def unsigned(job: BuildJob, found: Attached | HabanaError) -> BuildJob:
    """An up-to-date image of a library that signs, in the light of what its key attached: one
    lacking a signature naming its pair or an attestation is signed and attested by digest (no
    rebuild); one whose attachments could not be read fails (never taken as signed)."""
    if job.action is not Action.SKIP:
        return job
    if isinstance(found, HabanaError):
        why = f"what is attached to the image could not be read: {found}"
        failure = Failure("registry state", why, job.target.image, transient=found.transient)
        return replace(job, action=Action.FAIL, reason=why, failure=failure)
    if (missing := found.missing()) is None:
        return job
    return replace(job, action=Action.SIGN, reason=f"{job.reason}, {missing}: signed, not rebuilt")


# The step a pair fails at when its kernel, booted as its nodes boot it, trusts no machine key.
NODE_TRUST = "Secure Boot node"


def refused_by_node(job: BuildJob, blockers: Sequence[str]) -> BuildJob:
    """A pending job of a signing library whose kernel, booted with its nodes' arguments, loads
    no machine-owner key (blockers: why, from its configuration): a Secure Boot node would refuse
    its modules, so it is not built, load-tested and failed at the end; the plan says why."""
    if job.action is not Action.BUILD or not blockers:
        return job
    t = job.target
    booted = f"booted with {' '.join(t.node_kernel_args)}" if t.node_kernel_args else "as built"
    why = (
        f"a Secure Boot node would refuse its modules: {t.kernel} {booted} loads no "
        f"machine-owner keys ({'; '.join(blockers)})"
    )
    failure = Failure(NODE_TRUST, why, t.image, origin=INPUTS)
    return replace(job, action=Action.FAIL, reason=why, failure=failure)


def plan(
    targets: Sequence[BuildTarget],
    inputs: Mapping[str, TargetInputs | Failure],
    remote: Mapping[str, RemoteImage],
    force: bool = False,
    require_load_test: bool = False,
    require_secure_boot: bool = False,
) -> tuple[BuildJob, ...]:
    return tuple(
        plan_job(t, inputs[t.tag], remote[t.tag], force, require_load_test, require_secure_boot)
        for t in targets
    )
