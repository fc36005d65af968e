"""Signing: the certificate/key pair is checked up front; signatures are verified with openssl
exactly as the kernel checks them (PKCS#7 over the module content, appended with its trailer)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from habana_tasks.config.targets import SigningFiles
from habana_tasks.core.errors import ConfigError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.verification.signing import (
    MAGIC,
    accepted_hashes,
    load_signer,
    signature_problems,
    split_signature,
)
from tests.keys import make_pair

R = "6.1.0-56-amd64"


def sign(content: bytes, files: SigningFiles, tmp: Path, digest: str = "sha256") -> bytes:
    """What sign-file appends: detached PKCS#7 (no attributes, no certificates), the
    module_signature struct (id_type 2 = PKCS#7, big-endian length) and the magic."""
    (tmp / "m").write_bytes(content)
    subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-md",
         digest, "-outform", "DER", "-signer", str(files.certificate), "-inkey", str(files.key),
         "-in", str(tmp / "m"), "-out", str(tmp / "s")],
        check=True, capture_output=True,
    )  # fmt: skip
    signature = (tmp / "s").read_bytes()
    return content + signature + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(signature)) + MAGIC


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningFiles]:
    base = tmp_path_factory.mktemp("keys")
    return {name: make_pair(base, name) for name in ("library key", "other key")}


def test_the_certificate_and_key_are_checked_before_anything(
    pairs: dict[str, SigningFiles], tmp_path: Path
) -> None:
    signer = load_signer(pairs["library key"])
    assert signer.subject == "library key" and len(signer.certificate_sha256) == 64
    assert len(signer.key_id) == 40 and signer.certificate_pem.startswith(b"-----BEGIN")
    crossed = SigningFiles(pairs["library key"].certificate, pairs["other key"].key)
    with pytest.raises(ConfigError, match="not the private key of"):
        load_signer(crossed)
    (tmp_path / "junk").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"not an X\.509 certificate"):
        load_signer(SigningFiles(tmp_path / "junk", pairs["library key"].key))
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_signer(SigningFiles(pairs["library key"].certificate, tmp_path / "junk"))
    with pytest.raises(ConfigError, match="No such file"):
        load_signer(SigningFiles(tmp_path / "absent.der", pairs["library key"].key))


def test_signatures_verify_only_for_the_configured_certificate(
    pairs: dict[str, SigningFiles], tmp_path: Path
) -> None:
    signer = load_signer(pairs["library key"])
    runner = ProcessRunner()
    content = b"\x7fELF module content" * 100
    module = tmp_path / "habanalabs.ko"

    module.write_bytes(sign(content, pairs["library key"], tmp_path))
    assert split_signature(module.read_bytes())[0] == content  # type: ignore[index]
    assert signature_problems(runner, "habanalabs", module, signer, R, {"sha256"}) == []

    module.write_bytes(content)
    assert signature_problems(runner, "habanalabs", module, signer, R, None) == [
        "habanalabs: not signed (expected a signature by 'library key')"
    ]

    signed = sign(content, pairs["library key"], tmp_path)
    module.write_bytes(signed.replace(b"module content", b"module c0ntent", 1))
    tampered = signature_problems(runner, "habanalabs", module, signer, R, None)
    assert tampered and "does not verify against 'library key'" in tampered[0]

    module.write_bytes(sign(content, pairs["other key"], tmp_path))
    wrong = signature_problems(runner, "habanalabs", module, signer, R, None)
    assert wrong and "tampered, or signed with another key" in wrong[0]

    module.write_bytes(sign(content, pairs["library key"], tmp_path, digest="sha512"))
    assert signature_problems(runner, "habanalabs", module, signer, R, {"sha256"}) == [
        f"habanalabs: signed with sha512, which {R} cannot check (built in: sha256)"
    ]


def test_the_kernel_config_says_which_digests_it_can_check() -> None:
    config = "CONFIG_CRYPTO_SHA256=y\nCONFIG_CRYPTO_SHA512=m\n# CONFIG_CRYPTO_SHA1 is not set\n"
    assert accepted_hashes(config) == frozenset({"sha224", "sha256"})
