"""OCI and Docker image manifests and indexes: media types, the shape the specs require, and the
explicit choice of a platform's child in an index. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from habana_tasks.config.image_reference import DIGEST_RE, ImageReference
from habana_tasks.config.kernel_release import OCI_ARCH
from habana_tasks.core.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
INDEX_TYPES = frozenset((OCI_INDEX, DOCKER_LIST))
SCHEMA_VERSION = 2  # image manifests and indexes, OCI and Docker v2 alike


@dataclass(frozen=True)
class Manifest:
    reference: ImageReference
    digest: str
    media_type: str
    body: bytes = field(repr=False)

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise RegistryError(f"{self.reference}: manifest is not a JSON object")
        return data


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def select_platform(index: dict[str, Any], arch: str, where: str) -> str:
    """The digest of the linux/<arch> child of an index; an explicit choice, never the default."""
    oci_arch = OCI_ARCH.get(arch, arch)
    for entry in index.get("manifests", []):
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        if platform.get("os") == "linux" and platform.get("architecture") == oci_arch:
            digest = entry.get("digest")
            if isinstance(digest, str):
                return digest
    raise RegistryError(f"{where}: the image index has no linux/{oci_arch} manifest")


def manifest_problem(data: Any, media_type: str) -> str | None:
    """What makes a manifest unusable as the OCI spec defines it; None when it is well-formed.
    A malformed body must never be pinned as a digest or read for labels."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schemaVersion") != SCHEMA_VERSION:
        return f"schemaVersion is {data.get('schemaVersion')!r}, expected {SCHEMA_VERSION}"
    if media_type in INDEX_TYPES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            return "an index without a 'manifests' list"
        for i, entry in enumerate(entries):
            if why := _descriptor_problem(entry):
                return f"manifests[{i}] {why}"
        return None
    if why := _descriptor_problem(data.get("config")):
        return f"config {why}"
    layers = data.get("layers")
    if not isinstance(layers, list):
        return "no 'layers' list"
    for i, layer in enumerate(layers):
        if why := _descriptor_problem(layer):
            return f"layers[{i}] {why}"
    return None


def _descriptor_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "is not a descriptor object"
    if not isinstance(value.get("digest"), str) or not DIGEST_RE.match(value["digest"]):
        return f"has digest {value.get('digest')!r}, expected sha256:<64 hex>"
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"has size {size!r}, expected a non-negative integer"
    if not isinstance(value.get("mediaType"), str):
        return "has no mediaType string"
    return None


def media_type_of(data: Any, content_type: str) -> str:
    declared = data.get("mediaType") if isinstance(data, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    header = content_type.split(";", maxsplit=1)[0].strip()
    if header:
        return header
    if isinstance(data, dict) and "manifests" in data:
        return OCI_INDEX
    return OCI_MANIFEST
