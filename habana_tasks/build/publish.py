"""Publishing an image so that no tag ever names an unfinished one: the image goes to the
registry by digest (from an OCI layout podman compressed once), is signed there when the
library signs, and only then does its tag move, by one PUT of the very same manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine import skopeo
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import RegistryClient

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
