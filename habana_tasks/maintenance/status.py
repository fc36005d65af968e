"""What the library holds against what the matrix names. The verdicts (current, stale, missing,
unknown) are pure functions of a plan and registry state; library_status asks the registry."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from habana_tasks.build import labels
from habana_tasks.build import service as build_service
from habana_tasks.build.failure_records import is_record_tag, orphan_records
from habana_tasks.build.plan import (
    BUILT_IN,
    EXCLUDED,
    NODE_TRUST,
    Action,
    BuildJob,
    replacing_words,
)
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import HabanaError
from habana_tasks.registry.client import Existence, RemoteImage
from habana_tasks.trust import attachments


class State(enum.Enum):
    CURRENT = "current"
    STALE = "stale"
    UNSIGNED = "unsigned"  # current, but the library's key has not signed or attested it
    MISSING = "missing"
    FAILING = "failing"  # pending, but its inputs failed before (build/failure_records)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TargetStatus:
    kernel: str
    driver: str
    tag: str
    image: str
    state: State
    reason: str
    digest: str | None = None
    size: int | None = None
    created: str | None = None
    load_tested: bool = False
    load_test_boot: str | None = None  # "secure-boot" or "plain": the boot that proved it
    openshift: tuple[str, ...] = ()
    # "signed by <signer>", "unsigned", or None (no image, or an image from before signing labels)
    signing: str | None = None
    # What cosign attached to the image, from the repository's tag listing (None: not listed).
    cosign: str | None = None
    # The kernel's own modules KMM removes first (the image's label, or the plan's for a pair
    # to build): the kernel ships a module of the image's name or claiming its devices.
    replaces: tuple[str, ...] = ()

    @property
    def pending(self) -> bool:
        """Work for a builder: missing, stale or unsigned (unknown is an error to look at, not
        work)."""
        return self.state in (State.MISSING, State.STALE, State.UNSIGNED)


# The plan's definite refusals: a Secure Boot node's, the package's kernel rule, a built-in module.
PLAN_REFUSALS = frozenset((NODE_TRUST, EXCLUDED, BUILT_IN))


def target_status(job: BuildJob, remote: RemoteImage) -> TargetStatus:
    t = job.target
    missing = TargetStatus(
        t.kernel,
        t.driver,
        t.tag,
        t.image,
        State.MISSING,
        "not in the repository",
        openshift=t.openshift,
        replaces=job.inputs.in_tree_replaced if job.inputs is not None else (),
    )
    if remote.existence is Existence.UNKNOWN:
        return replace(missing, state=State.UNKNOWN, reason=remote.error or "registry error")
    # Refused by the plan for good (not a fault): it will not be built, whatever the registry.
    refused = job.failure is not None and job.failure.step in PLAN_REFUSALS
    if (job.action is Action.HOLD or refused) and remote.existence is Existence.ABSENT:
        return replace(missing, state=State.FAILING, reason=job.reason)
    if remote.existence is Existence.ABSENT:
        return missing
    boot = labels.load_test_boot(remote.labels)
    found = replace(
        missing,
        digest=remote.digest,
        size=remote.size,
        created=remote.labels.get(labels.OCI + "created"),
        load_tested=boot is not None,
        load_test_boot=boot,
        signing=signing_of(remote.labels),
        replaces=labels.in_tree_replaced(remote.labels) or missing.replaces,
    )
    if job.action is Action.SKIP:
        said = f"; {replacing_words(found.replaces)}" if found.replaces else ""
        return replace(found, state=State.CURRENT, reason=job.reason + said)
    if job.action is Action.HOLD or refused:
        return replace(found, state=State.FAILING, reason=job.reason)
    if job.action is Action.BUILD:
        return replace(found, state=State.STALE, reason=job.reason.removeprefix("stale: "))
    if job.action is Action.SIGN:
        return replace(found, state=State.UNSIGNED, reason=job.reason)
    return replace(found, state=State.UNKNOWN, reason=f"cannot tell if current: {job.reason}")


def signing_of(image_labels: Mapping[str, str]) -> str | None:
    state = image_labels.get(labels.SIGNING)
    if state == "signed":
        return f"signed by {image_labels.get(labels.SIGNER, '?')}"
    return state


def tested_by(boot: str | None) -> str:
    """The load-tested cell: which boot proved the image."""
    return f"yes ({boot})" if boot else "no"


def statuses(jobs: Sequence[BuildJob], remote: Mapping[str, RemoteImage]) -> list[TargetStatus]:
    return [target_status(job, remote[job.target.tag]) for job in jobs]


def orphan_tags(
    tags: Iterable[str], targets: Iterable[BuildTarget], live: Iterable[str] = ()
) -> list[str]:
    """Tags in the repository that the matrix no longer names: images, failure records of
    pairs no longer listed (a listed pair's record is not an orphan), and cosign attachments
    of no image a named tag holds (`live`: their digests)."""
    tags, named = list(tags), {t.tag for t in targets}
    images = [
        tag
        for tag in tags
        if not is_record_tag(tag) and not attachments.is_attachment(tag) and tag not in named
    ]
    return sorted([*images, *orphan_records(tags, named), *attachments.orphans(tags, live)])


def to_json(
    items: Sequence[TargetStatus], orphans: Sequence[str] | None, errors: Sequence[str] = ()
) -> str:
    """`unnamed_tags` is null (never an empty list) when the tags could not be listed."""
    rows = [{**asdict(s), "state": s.state.value} for s in items]
    unnamed = None if orphans is None else list(orphans)
    return json.dumps({"targets": rows, "unnamed_tags": unnamed, "errors": list(errors)}, indent=2)


def to_markdown(items: Sequence[TargetStatus], repository: str) -> str:
    """A catalogue a team can publish: kernel -> image by digest -> OpenShift versions."""
    lines = [
        f"# habanalabs driver images in `{repository}`",
        "",
        "| kernel | driver | image | OpenShift | load-tested | signing | cosign | built |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sorted(items, key=lambda s: (s.kernel, s.driver)):
        image = f"`{s.image.rsplit(':', 1)[0]}@{s.digest}`" if s.digest else f"_{s.state.value}_"
        lines.append(
            f"| `{s.kernel}` | {s.driver} | {image} | {', '.join(s.openshift) or '-'} | "
            f"{tested_by(s.load_test_boot)} | {s.signing or '-'} | {s.cosign or '-'} | "
            f"{s.created or '-'} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LibraryStatus:
    """Every pair's state, and the tags no longer named (None when they could not be listed)."""

    items: tuple[TargetStatus, ...]
    orphans: tuple[str, ...] | None
    problems: tuple[str, ...]
    run: build_service.PlannedRun  # what the items were read from (preflight answers from it)
    tags: frozenset[str] | None = None  # every tag the repository listed

    @property
    def summary(self) -> str:
        return self.run.summary

    @property
    def ok(self) -> bool:
        """Every question answered: no unknown state, and the tags could be listed."""
        return self.orphans is not None and not any(i.state is State.UNKNOWN for i in self.items)


def library_status(project: Project, config: Config) -> LibraryStatus:
    """What the repository holds against the matrix, with the registry asked once per question."""
    run = build_service.resolve_and_plan(project, config, config.targets)
    items = tuple(statuses(run.jobs, run.remote))
    try:
        tags = run.registry.list_tags(config.repository)
    except HabanaError as exc:
        return LibraryStatus(items, None, (f"cannot list tags: {exc}",), run)
    live = [i.digest for i in items if i.digest]
    items = tuple(
        replace(i, cosign=attachments.attached(tags, i.digest).text) if i.digest else i
        for i in items
    )
    orphans = tuple(orphan_tags(tags, config.targets, live))
    return LibraryStatus(items, orphans, (), run, frozenset(tags))
