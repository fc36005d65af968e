"""Failures remembered in the library's own repository, so that a pair that cannot build or load
with unchanged inputs is not rebuilt on every run (CI runners share nothing but the registry).

A record is a small OCI artifact under the tag `failed-<pair's tag>`: an image manifest whose
annotations say which inputs failed (the fingerprint), with which tool (a digest of this
package's code: a fixed check retries), when, at which step and why; its one layer holds the
same as JSON. A record is kept only for a failure whose origin is the pair's inputs (a build
step that failed, a check or the load test that refused the image), never one of the host
(podman, the container runtime, storage, a tool, a signal) or a registry that could not answer.
A record says its origin; one without it (written by an older version) holds nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import habana_tasks
from habana_tasks.config.image_reference import MAX_TAG_LENGTH, ImageReference
from habana_tasks.core.errors import INPUTS, Failure, HabanaError, RegistryError
from habana_tasks.registry.client import RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST

PREFIX = "failed-"
ARTIFACT_TYPE = "application/vnd.habana-ai-driver.failure.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
ANNOTATION = "io.habana-ai-driver.failure."
# Said of a failure in a pushing run that the memory does not keep.
NOT_RECORDED = "; nothing about this pair is recorded"
OPTIONAL = ("origin", "digest")  # fields a record's annotations may lack
MAX_CAUSE = 1000  # characters of the cause kept: its first lines name it
READ_THREADS = 16


@dataclass(frozen=True)
class FailureRecord:
    """One pair's remembered failure; `digest` is the record manifest's (for deleting it)."""

    tag: str  # the pair's image tag
    fingerprint: str
    tool: str
    date: str  # RFC 3339, UTC
    step: str
    cause: str
    origin: str = ""  # INPUTS; "" in records of older versions, which may be the host's
    digest: str = ""

    def holds(self, fingerprint: str, tool: str) -> bool:
        """The same inputs and the same tool failed before, for a reason of those inputs:
        building again would fail again."""
        return self.origin == INPUTS and self.fingerprint == fingerprint and self.tool == tool

    @property
    def line(self) -> str:
        return f"failed before with the same inputs ({self.date[:10]}): {self.step}: {self.cause}"


def record_tag(tag: str) -> str:
    """`failed-<tag>`; a tag too long for that keeps its start and a hash of the whole. A pair's
    tag starts with its driver version (a digit), so no pair's tag starts like a record's."""
    tag_name = PREFIX + tag
    if len(tag_name) <= MAX_TAG_LENGTH:
        return tag_name
    suffix = "-" + hashlib.sha256(tag.encode()).hexdigest()[:32]
    return PREFIX + tag[: MAX_TAG_LENGTH - len(PREFIX) - len(suffix)] + suffix


def is_record_tag(tag: str) -> bool:
    return tag.startswith(PREFIX)


def memorable(failure: Failure | None) -> bool:
    """Only what the pair's inputs decide is remembered."""
    return failure is not None and not failure.transient and failure.origin == INPUTS


@functools.cache
def tool_digest() -> str:
    """What this tool's code is: a failure found by one version of the checks says nothing of
    another's."""
    root = Path(habana_tasks.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return "sha256:" + digest.hexdigest()


def new_record(tag: str, fingerprint: str, failure: Failure, now: datetime) -> FailureRecord:
    return FailureRecord(
        tag,
        fingerprint,
        tool_digest(),
        now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        failure.step,
        " ".join(failure.why.split())[:MAX_CAUSE],
        failure.origin,
    )


def _annotations(record: FailureRecord) -> dict[str, str]:
    fields = asdict(record)
    del fields["digest"]
    return {ANNOTATION + name: value for name, value in fields.items()}


def write_record(registry: RegistryClient, repository: str, record: FailureRecord) -> str:
    """Push the record under its tag (replacing the pair's previous one); its manifest digest."""
    ref = ImageReference.parse(f"{repository}:{record_tag(record.tag)}")
    body = json.dumps(_annotations(record), indent=2).encode()
    empty = registry.put_blob(ref, b"{}")
    layer = registry.put_blob(ref, body)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": empty, "size": 2},
        "layers": [{"mediaType": ARTIFACT_TYPE, "digest": layer, "size": len(body)}],
        "annotations": _annotations(record),
    }
    return registry.put_manifest(ref, json.dumps(manifest).encode(), OCI_MANIFEST)


def update(
    registry: RegistryClient,
    repository: str,
    tag: str,
    fingerprint: str,
    previous: FailureRecord | None,
    failure: Failure | None,
) -> str | None:
    """After a push, the pair's record is obsolete; after a failure of its inputs, one is
    written (the previous one deleted); after any other failure, the memory is left as it is.
    Returns what to log."""
    if failure is not None and not memorable(failure):
        return None
    digest, said = None, None
    if failure is not None:
        record = new_record(tag, fingerprint, failure, datetime.now(UTC))
        digest = write_record(registry, repository, record)
        said = f"failure recorded: {repository}:{record_tag(tag)}"
    if previous is not None and previous.digest != digest:
        registry.delete_manifest(ImageReference.parse(repository), previous.digest)
    return said


def read_record(registry: RegistryClient, repository: str, tag: str) -> FailureRecord:
    """The record under a record tag, from its manifest's annotations (one request)."""
    ref = ImageReference.parse(f"{repository}:{tag}")
    manifest = registry.get_manifest(ref)
    annotations = manifest.json().get("annotations")
    # An older version's record has no origin: read as "", it holds nothing.
    names = [name for name in FailureRecord.__dataclass_fields__ if name not in OPTIONAL]
    if not isinstance(annotations, dict):
        raise RegistryError(f"{ref}: a failure record without annotations")
    values = {name: annotations.get(ANNOTATION + name) for name in names}
    missing = [name for name, value in values.items() if not isinstance(value, str)]
    if missing:
        raise RegistryError(f"{ref}: failure record lacks {', '.join(missing)}")
    origin = annotations.get(ANNOTATION + "origin")
    return FailureRecord(
        **{k: str(v) for k, v in values.items()},
        origin=origin if isinstance(origin, str) else "",
        digest=manifest.digest,
    )


def read_records(
    registry: RegistryClient, repository: str, tags: Iterable[str]
) -> dict[str, FailureRecord]:
    """The records of the given pairs' tags: the repository's tags listed once, then only the
    records that exist read. A record naming another pair than its tag says is ignored."""
    wanted = {record_tag(tag): tag for tag in tags}
    present = [t for t in registry.list_tags(repository) if t in wanted]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        found = list(pool.map(lambda t: read_record(registry, repository, t), present))
    return {r.tag: r for r, t in zip(found, present, strict=True) if wanted[t] == r.tag}


def orphan_records(tags: Iterable[str], named: Iterable[str]) -> list[str]:
    """Record tags of pairs the versions file no longer names."""
    kept = {record_tag(tag) for tag in named}
    return sorted(t for t in tags if is_record_tag(t) and t not in kept)


@dataclass(frozen=True)
class Memory:
    """The records a plan goes by; `problem` when they could not be read (then none hold,
    and every pending pair is built: a fault never holds a pair back)."""

    records: Mapping[str, FailureRecord]
    problem: str | None = None


def recall(registry: RegistryClient, repository: str, tags: Iterable[str]) -> Memory:
    tags = list(tags)
    if not tags:
        return Memory({})
    try:
        return Memory(read_records(registry, repository, tags))
    except HabanaError as exc:
        return Memory({}, f"failure records unread, pending pairs are built: {exc}")
