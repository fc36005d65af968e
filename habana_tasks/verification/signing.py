"""Module signing for Secure Boot nodes: the configured certificate and key, and the check that
each module's appended signature is the kernel's kind (PKCS#7) and verifies against it.

The key only ever reaches `sign-file` inside the build, as a podman build secret: this module reads
it once, to prove it belongs to the certificate, and never writes, logs or passes its content.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from habana_tasks.config.targets import SigningFiles
from habana_tasks.core import local_files
from habana_tasks.core.errors import CommandError, ConfigError
from habana_tasks.core.process import ProcessRunner

# The kernel's module signature trailer: ... PKCS#7 | struct module_signature | magic.
MAGIC = b"~Module signature appended~\n"
SIGNATURE_INFO = struct.Struct(">BBBBB3xI")  # algo, hash, id_type, signer_len, key_id_len, len
PKEY_ID_PKCS7 = 2
SECRET_ID = "module_signing_key"  # noqa: S105 (the secret's name, not a secret)
UNSIGNED = "unsigned"
# openssl's digest names -> the kernel's crypto config symbol that must be built in.
HASH_CONFIG = {
    "sha1": "CONFIG_CRYPTO_SHA1",
    "sha224": "CONFIG_CRYPTO_SHA256",
    "sha256": "CONFIG_CRYPTO_SHA256",
    "sha384": "CONFIG_CRYPTO_SHA512",
    "sha512": "CONFIG_CRYPTO_SHA512",
    "sha3-256": "CONFIG_CRYPTO_SHA3",
    "sha3-384": "CONFIG_CRYPTO_SHA3",
    "sha3-512": "CONFIG_CRYPTO_SHA3",
}


@dataclass(frozen=True)
class Signer:
    """The certificate the modules are signed for, as labels and the fingerprint record it."""

    files: SigningFiles
    certificate_sha256: str
    subject: str
    key_id: str
    certificate_pem: bytes


def load_signer(files: SigningFiles) -> Signer:
    """Read the certificate and prove the key belongs to it; every problem names its file."""
    try:
        raw = local_files.read_bytes(files.certificate, local_files.CERTIFICATE)
        key_pem = local_files.read_bytes(files.key, local_files.PRIVATE_KEY)
    except local_files.LocalFileError as exc:
        raise ConfigError([str(exc)]) from exc
    try:
        cert = (
            x509.load_pem_x509_certificate(raw)
            if raw.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_certificate(raw)
        )
    except ValueError as exc:
        raise ConfigError(
            [f"{files.certificate}: signing.certificate: not an X.509 certificate (DER or PEM)"]
        ) from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            [f"{files.key}: signing key: not an unencrypted PEM private key (as sign-file needs)"]
        ) from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise ConfigError([f"{files.key}: signing key: not the private key of {files.certificate}"])
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else cert.subject.rfc4514_string()
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        key_id = ski.value.digest.hex()
    except x509.ExtensionNotFound:
        key_id = hashlib.sha1(cert.public_key().public_bytes(der, public)).hexdigest()  # noqa: S324
    return Signer(
        files,
        hashlib.sha256(cert.public_bytes(der)).hexdigest(),
        subject,
        key_id,
        cert.public_bytes(serialization.Encoding.PEM),
    )


def split_signature(module: bytes) -> tuple[bytes, bytes, int] | None:
    """(signed content, signature, id_type) when a signature is appended; None otherwise."""
    if not module.endswith(MAGIC):
        return None
    end = len(module) - len(MAGIC)
    if end < SIGNATURE_INFO.size:
        return None
    *_, id_type, _, _, length = SIGNATURE_INFO.unpack(module[end - SIGNATURE_INFO.size : end])
    start = end - SIGNATURE_INFO.size - length
    if start < 0:
        return None
    return module[:start], module[start : end - SIGNATURE_INFO.size], id_type


def accepted_hashes(kernel_config: str) -> frozenset[str]:
    """Digests the kernel can check a module signature with: its crypto built in (=y)."""
    built_in = {line.split("=", 1)[0] for line in kernel_config.splitlines() if line.endswith("=y")}
    return frozenset(name for name, symbol in HASH_CONFIG.items() if symbol in built_in)


def digest_of(runner: ProcessRunner, signature: Path) -> str | None:
    done = runner.run(
        ["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(signature)],
        keep_output=True,
        check=False,
    )
    for line in done.output:
        text = line.strip()
        if text.startswith("algorithm:") and "digestAlgorithm" not in text:
            name = text.split(":", 1)[1].split("(", 1)[0].strip().lower()
            if name in HASH_CONFIG:
                return name
    return None


def signature_problems(
    runner: ProcessRunner,
    name: str,
    module: Path,
    signer: Signer,
    release: str,
    hashes: Collection[str] | None,
) -> list[str]:
    """The check the kernel makes: a PKCS#7 signature over the module content, by the configured
    certificate, with a digest the target kernel has built in (None: its config is unknown)."""
    parts = split_signature(module.read_bytes())
    if parts is None:
        return [f"{name}: not signed (expected a signature by {signer.subject!r})"]
    content, signature, id_type = parts
    if id_type != PKEY_ID_PKCS7:
        return [f"{name}: its signature is not PKCS#7 (id_type {id_type}), as the kernel needs"]
    with tempfile.TemporaryDirectory(prefix="habana-sig-") as tmp:
        work = Path(tmp)
        (work / "content").write_bytes(content)
        (work / "signature.p7").write_bytes(signature)
        (work / "certificate.pem").write_bytes(signer.certificate_pem)
        verify = [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(work / "signature.p7"), "-content", str(work / "content"),
            "-certfile", str(work / "certificate.pem"), "-nointern", "-noverify",
            "-purpose", "any", "-out", "/dev/null",
        ]  # fmt: skip
        try:
            runner.run(verify, keep_output=True)
        except CommandError:
            return [
                f"{name}: its signature does not verify against {signer.subject!r} "
                f"(key id {signer.key_id}): tampered, or signed with another key"
            ]
        digest = digest_of(runner, work / "signature.p7")
    if hashes is not None and digest not in hashes:
        return [
            f"{name}: signed with {digest or 'an unknown digest'}, which {release} cannot check "
            f"(built in: {', '.join(sorted(hashes)) or 'none'})"
        ]
    return []
