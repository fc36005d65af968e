"""cosign, the one tool that signs, attests and verifies the library's images: found (PATH
first, else the copy scripts/install-deps unpacked), its version checked, and always given an
image by digest. The tool never writes a signature format itself. A key's password reaches
cosign through its environment (COSIGN_PASSWORD), never its argv, a log or a report."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import ImageSigning
from habana_tasks.core import local_files
from habana_tasks.core.errors import CommandError, HabanaError, UsageError
from habana_tasks.core.process import LineSink, ProcessRunner, find_tool
from habana_tasks.registry import auth

MINIMUM = (2, 2)  # slsaprovenance1 attestations; --tlog-upload=false
# cosign 3 changes defaults: with --tlog-upload=false it uploads anyway and stores a referrers
# bundle instead of the .sig tag (3.0.0-3.0.2), or fails after the build; nodes read .sig/.att.
BEYOND = (3, 0)
UNPACKED = Path(".cache") / "tools" / "cosign" / "usr" / "bin" / "cosign"
PASSWORD_VARIABLE = "COSIGN_PASSWORD"  # noqa: S105  (a variable's name, not a password)
VERSION_RE = re.compile(r"^v?([0-9]+)\.([0-9]+)")
PUBLIC_KEY_PEM = "-----BEGIN PUBLIC KEY-----"
GET_IT = (
    "run scripts/install-deps (on Debian 12 it unpacks Debian 13's cosign package under "
    ".cache/tools), or put a cosign from 2.2 to 2.x first on PATH"
)
# Attestation types as cosign names them, and the predicate type each statement then carries.
SBOM = "cyclonedx"
PROVENANCE = "slsaprovenance1"
PREDICATE_TYPES = {SBOM: "https://cyclonedx.org/bom", PROVENANCE: "https://slsa.dev/provenance/v1"}


@dataclass(frozen=True)
class Cosign:
    """A usable cosign: where it is, what it calls its version, and the runner it runs with."""

    path: str
    version: str
    runner: ProcessRunner

    def run(
        self,
        args: Sequence[str],
        *,
        reference: str | None = None,
        password: str | None = None,
        on_line: LineSink | None = None,
        keep_output: bool = False,
    ) -> str:
        """cosign with args; given the image it talks to, with the login podman would use."""
        env = {PASSWORD_VARIABLE: password} if password is not None else {}
        with contextlib.ExitStack() as stack:
            if reference is not None:
                env.update(stack.enter_context(auth.docker_config(reference)))
            done = self.runner.run(
                [self.path, *args], env=env, on_line=on_line, keep_output=keep_output
            )
        return done.text


def _version(runner: ProcessRunner, path: str) -> tuple[str, str | None]:
    """cosign's version and why it cannot serve (None: it can): older than 2.2, or 3 and
    newer. A distribution's build may call itself "devel": then what the library needs is
    looked for by name in its help."""
    done = runner.run([path, "version", "--json"], keep_output=True, check=False)
    said = ""
    if done.returncode == 0:
        try:
            said = str(json.loads(done.text).get("gitVersion", ""))
        except (ValueError, AttributeError):
            said = ""
    if match := VERSION_RE.match(said):
        found = (int(match[1]), int(match[2]))
        if found < MINIMUM:
            return said, "older than 2.2"
        if found >= BEYOND:
            return said, "3 or newer, which stores signatures where nodes do not look (.sig/.att)"
        return said, None
    attest = runner.run([path, "attest", "--help"], keep_output=True, check=False).text
    sign = runner.run([path, "sign", "--help"], keep_output=True, check=False).text
    usable = PROVENANCE in attest and "--tlog-upload" in sign
    return said or "unknown", None if usable else "older than 2.2"


def find(runner: ProcessRunner, project_root: Path) -> Cosign:
    """The first usable cosign: on PATH, else the unpacked copy. None usable: a one-line
    UsageError (exit 2) naming what was found and how to get one."""
    tried: list[str] = []
    for path in (find_tool("cosign"), str(project_root / UNPACKED)):
        if path is None or not Path(path).is_file():
            continue
        try:
            version, unusable = _version(runner, path)
        except (CommandError, HabanaError) as exc:
            tried.append(f"{path} cannot run: {exc}")
            continue
        if unusable is None:
            return Cosign(path, version, runner)
        tried.append(f"{path} is {version}, {unusable}")
    found = f" ({'; '.join(tried)})" if tried else ""
    raise UsageError(
        f"[cosign] is configured but no cosign from 2.2 to 2.x was found{found}", hint=GET_IT
    )


def password(signing: ImageSigning, environ: Mapping[str, str]) -> str | None:
    """The key's password: the file the config names, else COSIGN_PASSWORD; a KMS key has none."""
    if signing.key_file is None:
        return None
    if signing.password_file is not None:
        text = local_files.read_text(signing.password_file, local_files.COSIGN_PASSWORD)
        return text.rstrip("\r\n")
    if PASSWORD_VARIABLE in environ:
        return environ[PASSWORD_VARIABLE]
    raise UsageError(
        f"{signing.key_file}: a cosign key is encrypted; set {PASSWORD_VARIABLE} or name a "
        "file holding the password with [cosign] password_file"
    )


def public_key(path: Path) -> str:
    """The public key's PEM, checked to be one (cosign verifies against it; nodes enforce it)."""
    text = local_files.read_text(path, local_files.COSIGN_PUBLIC_KEY)
    if PUBLIC_KEY_PEM not in text:
        raise UsageError(f"{path}: expected a PEM public key ({PUBLIC_KEY_PEM}), as cosign.pub")
    return text


def check_key(cosign: Cosign, signing: ImageSigning, secret: str | None) -> str:
    """Before anything is built: the key opens with its password and is the public key's
    pair (cosign derives the public key; a wrong password or another key is named). The public
    key's PEM."""
    if signing.key_file is not None:
        local_files.check_optional(signing.key_file, local_files.COSIGN_KEY)
        if not signing.key_file.exists():
            raise UsageError(f"{signing.key_file}: no such cosign key ([cosign] key)")
    expected = public_key(signing.public_key)
    try:
        derived = cosign.run(
            ["public-key", "--key", signing.reference], password=secret, keep_output=True
        )
    except CommandError as exc:
        said = exc.tail[-1] if exc.tail else str(exc)
        raise UsageError(
            f"{signing.reference}: cosign cannot open the key (wrong password?): {said}"
        ) from None
    if _pem_body(derived) != _pem_body(expected):
        raise UsageError(
            f"{signing.public_key}: not the public key of {signing.reference} "
            "([cosign] public_key must be the key's own pair)"
        )
    return expected


def _pem_body(text: str) -> str:
    return "".join(line.strip() for line in text.splitlines() if line and "-----" not in line)


def registry_flags(reference: str, insecure: frozenset[str]) -> list[str]:
    """cosign's flags for a registry the library reaches over plain HTTP (insecure_registries)."""
    if ImageReference.parse(reference).registry in insecure:
        return ["--allow-http-registry", "--allow-insecure-registry"]
    return []


def sign(
    cosign: Cosign,
    signing: ImageSigning,
    secret: str | None,
    by_digest: str,
    insecure: frozenset[str],
    on_line: LineSink | None = None,
    pair: Mapping[str, str] | None = None,
) -> None:
    """Sign the image by digest, the signed payload naming the pair (`pair`: annotations, which
    `cosign verify -a` and `invoke verify` check): a signature of one pair's image cannot pass
    for another's. cosign keeps one signature per key and payload: signing again adds none."""
    annotations = [f"--annotations={key}={value}" for key, value in sorted((pair or {}).items())]
    cosign.run(
        ["sign", "--key", signing.reference, "--tlog-upload=false", "--yes", *annotations,
         *registry_flags(by_digest, insecure), by_digest],
        reference=by_digest, password=secret, on_line=on_line,
    )  # fmt: skip


def signed_pairs(verified: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The annotations ("optional") of each simple-signing payload cosign verified."""
    found = []
    for payload in verified:
        optional = payload.get("optional")
        pairs = optional.items() if isinstance(optional, dict) else ()
        found.append({str(k): str(v) for k, v in pairs})
    return found


def attest(
    cosign: Cosign,
    signing: ImageSigning,
    secret: str | None,
    by_digest: str,
    kind: str,
    predicate: Path,
    insecure: frozenset[str],
    on_line: LineSink | None = None,
) -> None:
    """Attest a predicate of `kind` (SBOM or PROVENANCE); --replace keeps one per type."""
    cosign.run(
        ["attest", "--key", signing.reference, "--tlog-upload=false", "--yes", "--replace",
         "--type", kind, "--predicate", str(predicate),
         *registry_flags(by_digest, insecure), by_digest],
        reference=by_digest, password=secret, on_line=on_line,
    )  # fmt: skip


def verify(
    cosign: Cosign, public: Path, reference: str, insecure: frozenset[str]
) -> list[dict[str, Any]]:
    """cosign's own verification of the image's signatures with the public key; what it
    verified (one simple-signing payload per signature)."""
    out = cosign.run(
        ["verify", "--key", str(public), "--insecure-ignore-tlog", "--output", "json",
         *registry_flags(reference, insecure), reference],
        reference=reference, keep_output=True,
    )  # fmt: skip
    return _json_lines(out, reference)


def verify_attestation(
    cosign: Cosign, public: Path, reference: str, kind: str, insecure: frozenset[str]
) -> list[dict[str, Any]]:
    """cosign's own verification of the attestations of `kind`; their in-toto statements."""
    out = cosign.run(
        ["verify-attestation", "--key", str(public), "--insecure-ignore-tlog", "--type", kind,
         "--output", "json", *registry_flags(reference, insecure), reference],
        reference=reference, keep_output=True,
    )  # fmt: skip
    return _json_lines(out, reference)


def _json_lines(text: str, reference: str) -> list[dict[str, Any]]:
    """The JSON cosign printed (one document per line, or one array); warnings are skipped."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith(("{", "[")):
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise HabanaError(
                f"{reference}: cosign printed JSON that does not parse: {exc}"
            ) from None
        found.extend(value if isinstance(value, list) else [value])
    return found
