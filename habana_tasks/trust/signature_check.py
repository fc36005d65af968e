"""Whether a published image carries what the library's key must have attached to it — a
signature naming its pair, an SBOM and a provenance attestation — read from the registry and
checked with the public key here (as cosign checks them: the simple-signing payload's
signature; the DSSE envelope's over its pre-authentication encoding), so a plan can tell which
images to sign without running cosign once per image."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import ManifestUnknown
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import attachments, cosign


@dataclass(frozen=True)
class Attached:
    """What the library's key has attached to one image: a signature naming the pair, and the
    predicate types attested."""

    signed: bool
    names_pair: bool
    attested: frozenset[str]

    def missing(self) -> str | None:
        """Why the image must be signed again (None: nothing is missing)."""
        if not self.signed:
            return "no signature by the library's key"
        if not self.names_pair:
            return "its signature names no pair"
        lacking = [
            what
            for kind, what in ((cosign.SBOM, "SBOM"), (cosign.PROVENANCE, "provenance"))
            if cosign.PREDICATE_TYPES[kind] not in self.attested
        ]
        return f"no {' or '.join(lacking)} attestation by the library's key" if lacking else None


def names_pair(signed: Iterable[Mapping[str, str]], pair: Mapping[str, str]) -> bool:
    """Whether one of these signatures' annotations names the pair."""
    return any(all(s.get(k) == v for k, v in pair.items()) for s in signed)


@cache
def _public_key(pem: str) -> PublicKeyTypes:
    """The key, loaded once per run (a plan checks every image of the library with it)."""
    return serialization.load_pem_public_key(pem.encode())


def verifies(public_key_pem: str, signature: bytes, message: bytes) -> bool:
    """The signature is the key's over the message (ECDSA and RSA with SHA-256, or Ed25519,
    as cosign signs with each)."""
    key = _public_key(public_key_pem)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what an envelope's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def _b64(text: object) -> bytes | None:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def signature_pairs(
    registry: RegistryClient, repository: str, digest: str, public_key_pem: str
) -> list[dict[str, str]]:
    """The annotations of each signature of the image the key made (none: empty)."""
    try:
        layers = attachments.signature_layers(registry, repository, attachments.tags_of(digest)[0])
    except ManifestUnknown:
        return []
    found = []
    for encoded, payload in layers:
        signature = _b64(encoded)
        if not signature:
            continue
        said = _json(payload)
        image = (said.get("critical") or {}).get("image") or {}
        if image.get("docker-manifest-digest") != digest:
            continue
        if verifies(public_key_pem, signature, payload):
            optional = said.get("optional") or {}
            found.append({str(k): str(v) for k, v in dict(optional).items()})
    return found


def attested_types(
    registry: RegistryClient, repository: str, digest: str, public_key_pem: str
) -> frozenset[str]:
    """The predicate types of the image's attestations the key signed, about this digest."""
    ref = ImageReference.parse(f"{repository}:{attachments.tags_of(digest)[1]}")
    try:
        layers = registry.get_manifest(ref).json().get("layers", [])
    except ManifestUnknown:
        return frozenset()
    found = set()
    for layer in layers:
        envelope = _json(registry.get_blob(ref, str(layer.get("digest", ""))))
        body = _b64(envelope.get("payload", ""))
        kind = str(envelope.get("payloadType", ""))
        if body is None:
            continue
        signatures = [_b64(s.get("sig", "")) for s in envelope.get("signatures") or []]
        if not any(s and verifies(public_key_pem, s, pae(kind, body)) for s in signatures):
            continue
        statement = _json(body)
        subjects = statement.get("subject") or []
        if any((s.get("digest") or {}).get("sha256") == digest.split(":", 1)[1] for s in subjects):
            found.add(str(statement.get("predicateType", "")))
    return frozenset(found)


def attached(
    registry: RegistryClient,
    repository: str,
    digest: str,
    public_key_pem: str,
    pair: Mapping[str, str],
) -> Attached:
    """What the key attached to the image; a registry that does not answer raises."""
    signed = signature_pairs(registry, repository, digest, public_key_pem)
    return Attached(
        bool(signed),
        names_pair(signed, pair),
        attested_types(registry, repository, digest, public_key_pem),
    )
