"""Retention: what may be deleted from the repository, decided purely; never a named tag. An
image's cosign attachments go with it, under the same rule, and only once it is gone; an image
a run may be publishing (signed within the lease, not yet tagged) is never touched."""

from __future__ import annotations

from collections.abc import Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from habana_tasks.build import labels
from habana_tasks.build.failure_records import is_record_tag, record_tag
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import Config
from habana_tasks.core.errors import Failure, HabanaError
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.trust import attachments

# A run signs an image by digest, then moves its tag: an untagged image signed this recently may
# be one a run is publishing, and is left alone (a run longer than this is not expected).
LEASE = timedelta(hours=12)
UNTAGGED = "(untagged)"  # how an image no tag names is shown in the plan


@dataclass(frozen=True)
class PruneItem:
    tag: str
    digest: str
    reason: str
    # An attachment's image: it is deleted only once that image is gone.
    subject: str | None = None


@dataclass(frozen=True)
class TagInfo:
    digest: str
    created: datetime | None


@dataclass(frozen=True)
class Untagged:
    """An image no tag names that has cosign attachments: whether the registry still holds it,
    its build time, and when its newest signature says it was published (None: unsaid)."""

    present: bool
    created: datetime | None = None
    published: datetime | None = None


def prune_plan(
    tags: Mapping[str, TagInfo],
    named: Set[str],
    *,
    older_than_days: int | None = None,
    now: datetime,
    untagged: Mapping[str, Untagged] | None = None,
) -> list[PruneItem]:
    """Tags the matrix no longer names, optionally only those older than N days (a rollback
    window), and the failure records of pairs no longer named (whatever their age). Never a
    named tag or a named pair's record, nor a tag whose digest one of those also points to:
    deleting by digest would take it with it. `untagged`: per digest, the images no tag names
    whose attachments are listed; each goes under the same rule as a tag (its attachments after
    it), unless a run may be publishing it; an attachment whose image is gone goes."""
    kept = set(named) | {record_tag(tag) for tag in named}
    protected = {info.digest for tag, info in tags.items() if tag in kept}
    limit = now - timedelta(days=older_than_days) if older_than_days is not None else None
    items = []
    for tag, info in sorted(tags.items()):
        if tag in kept or info.digest in protected or attachments.is_attachment(tag):
            continue
        if is_record_tag(tag):  # a failure record says nothing once its pair is gone
            items.append(PruneItem(tag, info.digest, "failure record of a pair no longer listed"))
            continue
        if why := expired(info.created, limit, older_than_days):
            items.append(PruneItem(tag, info.digest, why))
    going = {item.digest for item in items}
    staying = {
        info.digest
        for tag, info in tags.items()
        if info.digest not in going and not attachments.is_attachment(tag)
    }
    gone: set[str] = set()
    for digest, image in sorted((untagged or {}).items()):
        if digest in staying or digest in going:
            continue
        if not image.present:
            gone.add(digest)
        elif image.published is not None and now - image.published < LEASE:
            continue  # a run may be publishing it: signed, its tag not yet moved
        elif why := expired(image.created, limit, older_than_days):
            items.append(PruneItem(UNTAGGED, digest, why.replace("named by the matrix", "tagged")))
            going.add(digest)
    # cosign's signatures and attestations go with their image, after it: never left behind,
    # never before it.
    for tag in attachments.orphans(tags, staying):
        subject = attachments.subject(tag)
        if subject in going or subject in gone:
            why = "cosign attachment of an image " + ("gone" if subject in gone else "pruned")
            items.append(PruneItem(tag, tags[tag].digest, why, subject))
    return items


def expired(created: datetime | None, limit: datetime | None, days: int | None) -> str | None:
    """Why an unnamed image goes (None: it stays, inside the rollback window or of no date)."""
    if limit is None:
        return "no longer named by the matrix"
    if created is None or created >= limit:
        return None
    return f"not named, older than {days} days"


@dataclass(frozen=True)
class PruneOutcome:
    item: PruneItem
    deleted: bool = False
    failure: Failure | None = None  # the deletion was refused or could not be asked

    @property
    def result(self) -> str:
        if self.failure is not None:
            return f"failed: {self.failure.why}"
        return "deleted" if self.deleted else "would delete"


def prune_library(
    config: Config,
    registry: RegistryClient,
    *,
    older_than_days: int | None,
    apply: bool,
    now: datetime,
) -> tuple[int, list[PruneOutcome]]:
    """The repository's tags read (each one's digest and build time), the pure plan made, and
    with apply each listed tag deleted by digest; returns the number of tags and the outcomes.
    A tag that cannot be read stops everything: deciding without it could delete a shared digest.
    """
    repository = ImageReference.parse(config.repository)
    tags = registry.list_tags(config.repository)
    with ThreadPoolExecutor(16) as pool:
        found = list(
            pool.map(
                lambda tag: registry.inspect(f"{config.repository}:{tag}", labels.FINGERPRINT), tags
            )
        )
    info = {}
    for tag, remote in zip(tags, found, strict=True):
        if remote.existence is Existence.UNKNOWN or remote.digest is None:
            raise HabanaError(f"{config.repository}:{tag}: {remote.error or 'unreadable'}")
        info[tag] = TagInfo(remote.digest, parse_time(remote.labels.get(labels.OCI + "created")))
    tagged = {i.digest for t, i in info.items() if not attachments.is_attachment(t)}
    subjects = sorted({s for t in tags if (s := attachments.subject(t))} - tagged)
    with ThreadPoolExecutor(16) as pool:
        read = pool.map(lambda digest: untagged_image(registry, config, digest), subjects)
        untagged = dict(zip(subjects, read, strict=True))
    plan = prune_plan(
        info, config.named_tags, older_than_days=older_than_days, now=now, untagged=untagged
    )
    outcomes: list[PruneOutcome] = []
    failed: set[str] = set()
    for item in plan:  # images first, then the attachments of those that are gone
        outcome = PruneOutcome(item)
        if apply and item.subject in failed:
            why = "kept: its image could not be deleted"
            outcome = PruneOutcome(item, failure=Failure("delete", why, item.tag))
        elif apply:
            try:
                registry.delete_manifest(repository, item.digest)
                outcome = PruneOutcome(item, deleted=True)
            except HabanaError as exc:
                outcome = PruneOutcome(item, failure=Failure.of("delete", exc, item.tag))
                failed.add(item.digest)
        outcomes.append(outcome)
    return len(tags), outcomes


def untagged_image(registry: RegistryClient, config: Config, digest: str) -> Untagged:
    """What the registry holds of an image no tag names: gone, or its build time and when its
    signatures (read, not verified: they can only keep it longer) say it was published."""
    remote = registry.inspect(f"{config.repository}@{digest}", labels.FINGERPRINT)
    if remote.existence is Existence.UNKNOWN:
        raise HabanaError(f"{config.repository}@{digest}: {remote.error or 'unreadable'}")
    if remote.existence is Existence.ABSENT:
        return Untagged(present=False)
    said = [
        parse_time(s.annotations.get(labels.PUBLISHED))
        for s in attachments.signatures_of(registry, config.repository, digest)
    ]
    return Untagged(
        True,
        parse_time(remote.labels.get(labels.OCI + "created")),
        max((t for t in said if t is not None), default=None),
    )


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 label value; None when absent, unreadable or the epoch itself (an image built
    without SOURCE_DATE_EPOCH has no date): such a tag is never "older"."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment if moment.timestamp() > 0 else None
