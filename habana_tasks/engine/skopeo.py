"""skopeo command lines: copying an image from a local OCI layout to a registry by digest,
blobs as they are (podman compressed them once, into the layout), so that the registry holds
the image before any tag names it."""

from __future__ import annotations

from pathlib import Path

from habana_tasks.core.process import LineSink, ProcessRunner
from habana_tasks.engine.podman import LAYOUT_NAME

SKOPEO = "skopeo"


def copy_layout_argv(layout: Path, destination: str, tls_verify: bool = True) -> list[str]:
    return [
        SKOPEO,
        "copy",
        "--quiet",
        "--preserve-digests",
        f"--dest-tls-verify={'true' if tls_verify else 'false'}",
        f"oci:{layout}:{LAYOUT_NAME}",
        f"docker://{destination}",
    ]


def copy_layout(
    runner: ProcessRunner,
    layout: Path,
    destination: str,
    tls_verify: bool,
    on_line: LineSink | None = None,
) -> None:
    """Copy the layout's image to `destination` (repository@digest: no tag is written)."""
    runner.run(copy_layout_argv(layout, destination, tls_verify), on_line=on_line)
