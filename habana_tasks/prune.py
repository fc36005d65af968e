"""Retention: what may be deleted from the repository, decided purely; never a named tag."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime, timedelta


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
    window). Never a named tag, nor a tag whose digest a named tag also points to: deleting by
    digest would take the named tag with it."""
    protected = {info.digest for tag, info in tags.items() if tag in named}
    limit = now - timedelta(days=older_than_days) if older_than_days is not None else None
    items = []
    for tag, info in sorted(tags.items()):
        if tag in named or info.digest in protected:
            continue
        if limit is not None:
            if info.created is None or info.created >= limit:
                continue
            items.append(
                PruneItem(tag, info.digest, f"not named, older than {older_than_days} days")
            )
        else:
            items.append(PruneItem(tag, info.digest, "no longer named by the matrix"))
    return items
