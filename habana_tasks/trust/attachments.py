"""cosign's attachments, as the registry lists them: the signatures (`sha256-<hex>.sig`) and
attestations (`sha256-<hex>.att`) of the image with digest sha256:<hex>, in the same
repository. They belong to that image: kept while a tag names it, removed with it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import ManifestUnknown, RegistryError
from habana_tasks.registry.client import RegistryClient

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"  # a .sig layer's signature
ATTACHMENT = re.compile(r"^sha256-([0-9a-f]{64})\.(sig|att|sbom)$")
KINDS = {"sig": "signature", "att": "attestations", "sbom": "SBOM"}


def subject(tag: str) -> str | None:
    """The digest of the image a tag is an attachment of; None for any other tag."""
    match = ATTACHMENT.match(tag)
    return f"sha256:{match[1]}" if match else None


def is_attachment(tag: str) -> bool:
    return subject(tag) is not None


def tags_of(digest: str) -> tuple[str, str]:
    """The signature and attestation tags cosign gives the image with this digest."""
    hexdigest = digest.removeprefix("sha256:")
    return f"sha256-{hexdigest}.sig", f"sha256-{hexdigest}.att"


@dataclass(frozen=True)
class Attached:
    """What one listing says is attached to an image."""

    signed: bool = False
    attested: bool = False

    @property
    def text(self) -> str:
        if self.signed and self.attested:
            return "signed, SBOM + provenance"
        return "signed" if self.signed else ("attested, unsigned" if self.attested else "none")


def attached(tags: Iterable[str], digest: str | None) -> Attached:
    if digest is None:
        return Attached()
    present = set(tags)
    signature, attestations = tags_of(digest)
    return Attached(signature in present, attestations in present)


def orphans(tags: Iterable[str], live: Iterable[str]) -> list[str]:
    """Attachment tags whose image no tag of the repository names any more."""
    alive = set(live)
    return sorted(t for t in tags if (s := subject(t)) is not None and s not in alive)


@dataclass(frozen=True)
class SignedFor:
    """What one signature payload in the repository says (not verified: a lead, which verify
    checks with cosign before acting on it): the image it signs and its annotations."""

    digest: str
    annotations: dict[str, str]


def signatures(registry: RegistryClient, repository: str) -> list[SignedFor]:
    """Every signature payload attached in the repository, read from the registry (the `.sig`
    tags, their manifests and payload blobs). A registry that does not answer raises."""
    found: list[SignedFor] = []
    tags = [t for t in registry.list_tags(repository) if t.endswith(".sig") and subject(t)]
    with ThreadPoolExecutor(8) as pool:
        for each in pool.map(lambda tag: _read(registry, repository, tag), tags):
            found.extend(each)
    return found


def signatures_of(registry: RegistryClient, repository: str, digest: str) -> list[SignedFor]:
    """The signature payloads attached to one image (none: empty)."""
    try:
        return _read(registry, repository, tags_of(digest)[0])
    except ManifestUnknown:
        return []


def signature_layers(
    registry: RegistryClient, repository: str, tag: str
) -> list[tuple[str, bytes]]:
    """Each signature a `.sig` tag holds: its base64 signature (the layer's annotation, "" when
    none) and its payload. No such tag: ManifestUnknown."""
    ref = ImageReference.parse(f"{repository}:{tag}")
    return [
        (
            str((layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION, "")),
            registry.get_blob(ref, str(layer.get("digest", ""))),
        )
        for layer in registry.get_manifest(ref).json().get("layers", [])
    ]


def _read(registry: RegistryClient, repository: str, tag: str) -> list[SignedFor]:
    """The payloads of one `.sig` tag's signatures about its subject."""
    ref = f"{repository}:{tag}"
    signed = []
    for _, body in signature_layers(registry, repository, tag):
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise RegistryError(f"{ref}: a signature payload is not a JSON object")
        image = (payload.get("critical") or {}).get("image") or {}
        optional = payload.get("optional") or {}
        if image.get("docker-manifest-digest") == subject(tag) and isinstance(optional, dict):
            said = {str(k): str(v) for k, v in optional.items()}
            signed.append(SignedFor(str(subject(tag)), said))
    return signed
