"""Publishing an image so that no tag ever names an unfinished one: the image goes to the
registry by digest (from an OCI layout podman compressed once), is signed there when the
library signs, and only then does its tag move, by one PUT of the very same manifest. An image
already published that the library's key has not signed is signed and attested where it is,
by digest, without a rebuild (its tag does not move)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from habana_tasks.build import evidence, labels
from habana_tasks.build.plan import BuildJob
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine import skopeo
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import signature_check
from habana_tasks.trust.signer import ImageSigner

# Called with the image's repository@digest once the registry holds it, before its tag moves.
Attach = Callable[[str], None]


def layout_manifest(layout: Path, digest: str) -> tuple[bytes, str]:
    """The bytes and media type of the manifest a layout holds under `digest`."""
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    for entry in index.get("manifests", []):
        if entry.get("digest") == digest:
            algorithm, hexdigest = digest.split(":", 1)
            body = (layout / "blobs" / algorithm / hexdigest).read_bytes()
            return body, str(entry["mediaType"])
    raise HabanaError(f"{layout}: no manifest {digest} in the layout podman wrote")


def publish(
    podman: Podman,
    registry: RegistryClient,
    target: BuildTarget,
    image_id: str,
    work: Path,
    tls_verify: bool,
    on_line: LineSink | None = None,
    attach: Attach | None = None,
) -> str:
    """Push by digest, attach (sign), then tag; the image's digest."""
    layout = work / "layout"
    digest = podman.push_to_layout(image_id, layout, work / "layout-digest", on_line)
    skopeo.copy_layout(podman.runner, layout, f"{target.repository}@{digest}", tls_verify, on_line)
    if attach is not None:
        attach(f"{target.repository}@{digest}")
    manifest, media_type = layout_manifest(layout, digest)
    registry.put_manifest(ImageReference.parse(target.image), manifest, media_type)
    return digest


def sign_published(
    podman: Podman,
    registry: RegistryClient,
    config: Config,
    signer: ImageSigner,
    job: BuildJob,
    work: Path,
    invocation: str,
    stage: Callable[[str], None],
    on_line: LineSink | None = None,
) -> str:
    """Sign and attest the published image the plan found up to date but not signed by the
    library's key, by the digest the plan read (never what its tag names by then); then read
    back what the key attached. Its SBOM is made from the image's own files; its provenance says
    it was attested after the build. The digest."""
    target, digest, inputs = job.target, job.remote_digest, job.inputs
    assert digest is not None and inputs is not None
    by_digest = f"{target.repository}@{digest}"
    stage("pull")
    podman.pull(by_digest, config.tls_verify(target.image), on_line)
    work.mkdir(parents=True, exist_ok=True)
    podman.export_rootfs(by_digest, work / "rootfs.tar", on_line)
    stage("evidence")
    started = datetime.now(UTC)
    found = evidence.gather(
        podman.runner, config, target, inputs, work / "rootfs.tar", work / "evidence",
        invocation, started, {}, after_build=True,
    )  # fmt: skip
    stage("sign")
    sign_and_attest(registry, signer, target, by_digest, found, work / "trust", on_line)
    stage("verify")
    attached = signature_check.attached(
        registry, target.repository, digest, signer.public_key_pem, labels.pair_identity(target)
    )
    if missing := attached.missing():
        raise HabanaError(f"{by_digest}: signed, yet the registry shows {missing}")
    return digest


def sign_and_attest(
    registry: RegistryClient,
    signer: ImageSigner,
    target: BuildTarget,
    by_digest: str,
    found: evidence.Evidence,
    work: Path,
    on_line: LineSink | None = None,
) -> None:
    """Sign the image by digest (its signature naming the pair and when it was published) and
    attest its SBOM and provenance. A signature by the key naming the pair already there (a
    rebuild to the same digest) is not made again: one per image and key."""
    digest = by_digest.rsplit("@", 1)[1]
    pem = signer.public_key_pem
    signed = signature_check.signature_pairs(registry, target.repository, digest, pem)
    named = signature_check.names_pair(signed, labels.pair_identity(target))
    annotations = None if named else labels.signature_annotations(target, datetime.now(UTC))
    signer.attach(by_digest, found.sbom(digest), found.provenance(), work, on_line, annotations)
