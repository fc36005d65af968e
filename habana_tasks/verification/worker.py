"""The KMM worker's side of the load test's guest: its tools, taken from the target's toolkit.

On a node, KMM's worker container (its own image, with its own kmod) loads what the image's
`cp` copied out. In the guest that worker is the toolkit's kmod and a few commands, each with
its shared libraries, collected by the Dockerfile's own `tools` stage (the one that gives the
image its tools), built with `--network none` and kept as one tar per toolkit digest.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import uuid
from pathlib import Path

from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import BuildSpec, Podman

# What the guest's /init and the worker run: mounts, chroot into the image as its user, kmod.
TOOLS = (
    "sh",
    "mount",
    "mkdir",
    "chroot",
    "modprobe",
    "modinfo",
    "ln",
    "sed",
    "head",
    "tail",
    "dmesg",
    "uname",
    "sleep",
    "cat",
)
STAGE = "tools"
TAR_PATH = "/rootfs.tar"


class WorkerTools:
    """Builds the tools stage once per (Dockerfile, toolkit digest) and keeps its tar."""

    def __init__(self, podman: Podman, dockerfile: Path, root: Path) -> None:
        self.podman = podman
        self.dockerfile = dockerfile
        self.root = root
        self._lock = threading.Lock()

    def tar(self, toolkit_image: str, on_line: LineSink | None = None) -> Path:
        """The worker's root filesystem (a tar) for the kernel this pinned toolkit carries."""
        recipe = self.dockerfile.read_bytes()
        material = b"\0".join((recipe, toolkit_image.encode(), " ".join(TOOLS).encode()))
        directory = self.root / f"worker-{hashlib.sha256(material).hexdigest()[:24]}"
        with self._lock:
            if (directory / "rootfs.tar").is_file():
                return directory / "rootfs.tar"
            partial = directory.with_name(f"{directory.name}.partial-{uuid.uuid4().hex[:8]}")
            partial.mkdir(parents=True)
            try:
                (partial / "Dockerfile").write_bytes(recipe)
                spec = BuildSpec(
                    context=partial,
                    containerfile=partial / "Dockerfile",
                    iidfile=partial / "image-id",
                    build_args={"TOOLKIT_IMAGE": toolkit_image, "IMAGE_TOOLS": " ".join(TOOLS)},
                    target=STAGE,
                    timestamp=0,
                )
                image = self.podman.build(spec, on_line)
                found = self.podman.copy_files_from_image(
                    image, {"rootfs.tar": [TAR_PATH]}, partial
                )
                if "rootfs.tar" not in found:
                    raise HabanaError(f"the Dockerfile's {STAGE} stage made no {TAR_PATH}")
                if directory.exists():
                    shutil.rmtree(directory)
                partial.replace(directory)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return directory / "rootfs.tar"
