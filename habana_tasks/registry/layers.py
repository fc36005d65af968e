"""One file read out of an image layer as it streams: the tar is scanned, never stored, and the
whole layer is hashed and checked against its digest before anything found in it is used."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, cast

from habana_tasks.core.archive import relative_name
from habana_tasks.core.errors import BodyError, DigestMismatchError, RegistryError
from habana_tasks.core.http_client import BODY_ERRORS, BodyReader, short_reason


@dataclass(frozen=True)
class LayerMatch:
    """What one layer says of a path: its content, or that it deletes it (a whiteout)."""

    content: bytes | None
    deleted: bool


def whiteout_of(path: str) -> str:
    """The OCI whiteout entry that deletes `path` in a later layer."""
    head, _, name = path.rpartition("/")
    return f"{head}/.wh.{name}" if head else f".wh.{name}"


def scan_layer(
    body: BodyReader, digest: str, what: str, paths: Sequence[str]
) -> dict[str, LayerMatch]:
    """Stream one layer once and look for each of `paths` (relative, as archive.relative_name
    gives them); what the layer says of each path it holds or deletes."""
    reader = _HashingReader(body)
    wanted = set(paths)
    whiteouts = {whiteout_of(path): path for path in paths}
    found: dict[str, LayerMatch] = {}
    try:
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|*") as tar:
            for member in tar:
                name = relative_name(member.name)
                if name in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    found[name] = LayerMatch(handle.read() if handle else None, False)
                elif name in whiteouts:
                    found[whiteouts[name]] = LayerMatch(None, True)
    except tarfile.TarError as exc:
        raise RegistryError(f"{what}: not a readable tar ({exc})") from exc
    reader.drain()
    if reader.digest != digest:
        raise DigestMismatchError(f"{what}: does not hash to its digest")
    return found


class _HashingReader:
    """A file-like view of a layer's body, within the bounds of BodyReader (the layer's own
    declared size among them), that hashes everything read through it."""

    def __init__(self, body: BodyReader) -> None:
        self.body = body
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.body.read1(size if size > 0 else 1 << 20)
        except BodyError as exc:
            raise RegistryError(str(exc)) from exc
        except BODY_ERRORS as exc:
            raise RegistryError(
                f"{self.body.what}: the layer was cut off ({short_reason(exc)})"
            ) from exc
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()
