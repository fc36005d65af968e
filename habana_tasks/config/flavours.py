"""Image flavours: which tools an image carries besides its modules, and which KMM needs them.

KMM 2.x pulls the image with `/bin/sh -c 'exit 0'` and copies the module tree out with an init
container that runs `/bin/sh -c 'mkdir -p …; cp -R …'` in the image (kernel-module-management,
internal/pod/imagepuller.go and workerpodmanager.go, since August 2024); its own worker image
then loads the modules with its own kmod. Its documentation asks only for `cp`, but an image
without `sh` and `mkdir` never gets its modules copied. KMM 1.x runs `modprobe` and `sleep` in
the image itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flavour:
    name: str
    tools: tuple[str, ...]  # commands the image must run, copied from the toolkit
    serves: str  # who loads such an image, for README, the KMM manifest and errors


MINIMAL = Flavour(
    "minimal",
    ("sh", "mkdir", "cp"),
    "KMM 2.x (its image-extractor runs the image's /bin/sh, mkdir and cp)",
)
KMM1 = Flavour(
    "kmm1",
    (*MINIMAL.tools, "modprobe", "depmod", "sleep"),
    "KMM 1.x (OpenShift 4.12/4.13 runs modprobe and sleep in the image) and KMM 2.x",
)
FLAVOURS = {flavour.name: flavour for flavour in (MINIMAL, KMM1)}
DEFAULT = MINIMAL.name
EXPECTED = "expected one of: " + ", ".join(FLAVOURS)

# Where KMM looks (the Module's modprobe.dirName default) and what the emitted Module says.
DIR_NAME = "/opt"
# The driver requests firmware as "habanalabs/gaudi/<file>", relative to the firmware search
# path. The image ships it at /opt/lib/firmware/habanalabs/gaudi/, and KMM copies the *contents*
# of firmwarePath into the node's search path, so firmwarePath is /opt/lib/firmware (one level
# deeper, /opt/lib/firmware/habanalabs, would make the driver's requests miss).
FIRMWARE_PATH = "/opt/lib/firmware"
# The emptyDir that KMM's image-extractor copies into and its worker reads (a path in the pod).
SHARED_DIR = "/tmp"  # noqa: S108
# The image's user as a container runtime resolves `USER 1001` without /etc/passwd.
IMAGE_USER = "1001:0"


def extractor_script(release: str, firmware: bool) -> str:
    """The `/bin/sh -c` argument of KMM's image-extractor init container, as KMM writes it:
    the module tree of this release, then the contents of firmwarePath when there is one."""
    copies = [(f"{DIR_NAME}/lib/modules/{release}", f"{SHARED_DIR}{DIR_NAME}/lib/modules")]
    if firmware:
        copies.append((f"{FIRMWARE_PATH}/*", f"{SHARED_DIR}{FIRMWARE_PATH}"))
    return "".join(f"\nmkdir -p {dst};\ncp -R {src} {dst};\n" for src, dst in copies)
