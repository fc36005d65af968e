"""Which published images a plan signs: the key's signature (simple signing) and attestations
(DSSE) read and checked here as cosign checks them, and what the plan makes of the answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from habana_tasks.build import labels
from habana_tasks.build.plan import Action, plan_job, unsigned
from habana_tasks.core.errors import RegistryError
from habana_tasks.registry.client import Existence, RemoteImage
from habana_tasks.trust import cosign
from habana_tasks.trust.signature_check import Attached, pae, verifies
from tests.samples import INPUTS, TARGET

Signer = Callable[[bytes], bytes]


def pem_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def key_pairs() -> dict[str, tuple[str, Signer]]:
    """A key of each kind cosign signs with, and how it signs a message."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    edwards = ed25519.Ed25519PrivateKey.generate()
    return {
        "ecdsa": (pem_of(p256), lambda m: p256.sign(m, ec.ECDSA(hashes.SHA256()))),
        "rsa": (pem_of(rsa_key), lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256())),
        "ed25519": (pem_of(edwards), edwards.sign),
    }


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "ed25519"])
def test_a_signature_verifies_with_its_key_only_and_over_its_message_only(kind: str) -> None:
    pairs = key_pairs()
    pem, sign = pairs[kind]
    other_pem = pairs["ecdsa" if kind != "ecdsa" else "rsa"][0]
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": "sha256:1"}}}).encode()
    signature = sign(payload)
    assert verifies(pem, signature, payload)
    assert not verifies(pem, signature, payload + b" ")
    assert not verifies(other_pem, signature, payload)


def test_an_envelope_signs_its_pre_authentication_encoding() -> None:
    """DSSE: the signature covers "DSSEv1 <len> <type> <len> <body>", not the body alone."""
    pem, sign = key_pairs()["ecdsa"]
    body = b'{"_type":"https://in-toto.io/Statement/v1"}'
    kind = "application/vnd.in-toto+json"
    assert pae(kind, body) == b"DSSEv1 28 application/vnd.in-toto+json 43 " + body
    assert verifies(pem, sign(pae(kind, body)), pae(kind, body))
    assert not verifies(pem, sign(body), pae(kind, body))
    assert base64.b64encode(body)  # the envelope carries the body base64-encoded


BOTH = frozenset(cosign.PREDICATE_TYPES.values())


@pytest.mark.parametrize(
    ("found", "missing"),
    [
        (Attached(True, True, BOTH), None),
        (Attached(False, False, BOTH), "no signature by the library's key"),
        (Attached(True, False, BOTH), "its signature names no pair"),
        (
            Attached(True, True, frozenset()),
            "no SBOM or provenance attestation by the library's key",
        ),
        (
            Attached(True, True, frozenset({cosign.PREDICATE_TYPES[cosign.SBOM]})),
            "no provenance attestation by the library's key",
        ),
    ],
)
def test_what_is_missing_is_named(found: Attached, missing: str | None) -> None:
    assert found.missing() == missing


def up_to_date() -> RemoteImage:
    fingerprint = labels.fingerprint(TARGET, INPUTS)
    return RemoteImage(
        TARGET.image, Existence.PRESENT, "sha256:" + "a" * 64, {labels.FINGERPRINT: fingerprint}
    )


def test_the_plan_signs_an_up_to_date_image_the_key_has_not_signed_and_builds_nothing() -> None:
    skip = plan_job(TARGET, INPUTS, up_to_date())
    assert skip.action is Action.SKIP
    assert unsigned(skip, Attached(True, True, BOTH)) == skip
    job = unsigned(skip, Attached(False, False, frozenset()))
    assert job.action is Action.SIGN and job.remote_digest == skip.remote_digest
    assert job.reason.endswith("no signature by the library's key: signed, not rebuilt")
    absent = plan_job(TARGET, INPUTS, RemoteImage(TARGET.image, Existence.ABSENT))
    assert unsigned(absent, Attached(False, False, frozenset())) == absent  # built, then signed


def test_attachments_that_cannot_be_read_fail_the_pair_never_pass_for_signed() -> None:
    skip = plan_job(TARGET, INPUTS, up_to_date())
    job = unsigned(skip, RegistryError("registry.example: HTTP 503"))
    assert job.action is Action.FAIL and job.failure is not None and job.failure.transient
    assert job.reason == (
        "what is attached to the image could not be read: registry.example: HTTP 503"
    )
