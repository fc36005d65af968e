"""Retention: what may be deleted from the repository, decided purely; never a named tag."""

from __future__ import annotations

from collections.abc import Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from habana_tasks.build import labels
from habana_tasks.build.failure_records import is_record_tag, record_tag
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import Config
from habana_tasks.core.errors import Failure, HabanaError
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.trust import attachments


@dataclass(frozen=True)
class PruneItem:
    tag: str
    digest: str
    reason: str


@dataclass(frozen=True)
class TagInfo:
    digest: str
    created: datetime | None


def prune_plan(
    tags: Mapping[str, TagInfo],
    named: Set[str],
    *,
    older_than_days: int | None = None,
    now: datetime,
) -> list[PruneItem]:
    """Tags the matrix no longer names, optionally only those older than N days (a rollback
    window), and the failure records of pairs no longer named (whatever their age). Never a
    named tag or a named pair's record, nor a tag whose digest one of those also points to:
    deleting by digest would take it with it."""
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
        if limit is not None:
            if info.created is None or info.created >= limit:
                continue
            items.append(
                PruneItem(tag, info.digest, f"not named, older than {older_than_days} days")
            )
        else:
            items.append(PruneItem(tag, info.digest, "no longer named by the matrix"))
    # cosign's signatures and attestations go with their image, after it: never left behind.
    going = {item.tag for item in items}
    staying = {
        info.digest
        for tag, info in tags.items()
        if tag not in going and not attachments.is_attachment(tag)
    }
    for tag in attachments.orphans(tags, staying):
        items.append(PruneItem(tag, tags[tag].digest, "cosign attachment of an image not kept"))
    return items


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
    outcomes = []
    for item in prune_plan(info, config.named_tags, older_than_days=older_than_days, now=now):
        outcome = PruneOutcome(item)
        if apply:
            try:
                registry.delete_manifest(repository, item.digest)
                outcome = PruneOutcome(item, deleted=True)
            except HabanaError as exc:
                outcome = PruneOutcome(item, failure=Failure.of("delete", exc, item.tag))
        outcomes.append(outcome)
    return len(tags), outcomes


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 label value; None when absent, unreadable or the epoch itself (an image built
    without SOURCE_DATE_EPOCH has no date): such a tag is never "older"."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.timestamp() > 0 else None
