"""cosign's attachments, as the registry lists them: the signatures (`sha256-<hex>.sig`) and
attestations (`sha256-<hex>.att`) of the image with digest sha256:<hex>, in the same
repository. They belong to that image: kept while a tag names it, removed with it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
