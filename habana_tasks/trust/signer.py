"""The library's image signer: made once per run, before anything is built (a missing cosign,
a key that does not open or is not the public key's pair stop the run with exit 2), then
asked to sign each image by digest between its push and its tag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from habana_tasks.config.targets import Config, ImageSigning
from habana_tasks.core.process import LineSink, ProcessRunner
from habana_tasks.trust import cosign
from habana_tasks.trust.cosign import Cosign


@dataclass(frozen=True)
class ImageSigner:
    tool: Cosign
    signing: ImageSigning
    insecure: frozenset[str]
    secret: str | None = field(default=None, repr=False)
    public_key_pem: str = ""  # the public key check_key read: what attachments are checked with

    def attach(
        self,
        by_digest: str,
        sbom_json: str,
        provenance_json: str,
        work: Path,
        on_line: LineSink | None = None,
        pair: Mapping[str, str] | None = None,
    ) -> None:
        """Sign the image the registry holds under `by_digest` (repository@sha256:…), the
        signature naming the pair (None: the image has one already, it is not signed again),
        and attest its SBOM and provenance (one of each: cosign replaces an earlier one)."""
        if pair is not None:
            cosign.sign(
                self.tool, self.signing, self.secret, by_digest, self.insecure, on_line, pair
            )
        work.mkdir(parents=True, exist_ok=True)
        for kind, text, name in (
            (cosign.SBOM, sbom_json, "sbom.cdx.json"),
            (cosign.PROVENANCE, provenance_json, "provenance.json"),
        ):
            (work / name).write_text(text, encoding="utf-8")
            cosign.attest(
                self.tool, self.signing, self.secret, by_digest, kind, work / name,
                self.insecure, on_line,
            )  # fmt: skip


def prepare(
    config: Config, runner: ProcessRunner, project_root: Path, environ: Mapping[str, str]
) -> ImageSigner | None:
    """The signer [cosign] asks for, checked; None when the library does not sign images."""
    signing = config.image_signing
    if signing is None:
        return None
    tool = cosign.find(runner, project_root)
    secret = cosign.password(signing, environ)
    public = cosign.check_key(tool, signing, secret)
    return ImageSigner(tool, signing, config.insecure_registries, secret, public)
