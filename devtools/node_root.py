"""A node's container runtime library, for the tests that prove the node-side policy: a
Debian 13 root holding skopeo 1.18 (containers/image 5.34, the library CRI-O uses) and cosign,
made once per recipe with mmdebstrap under the cache. Debian 12's skopeo is built without
sigstore; this one enforces sigstoreSigned. As root it is made and entered with chroot; as an
ordinary user mmdebstrap makes it in its unshare mode (owned by the user's subordinate ids) and
`mmdebstrap --unshare-helper` enters it in a user namespace with the same ids."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from habana_tasks.core.process import ProcessRunner

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("skopeo", "cosign")
RECIPE = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(PACKAGES)}", SUITE]


def ensure(cache: Path, runner: ProcessRunner) -> Path:
    """The root for this recipe, made if it is not there yet (about 30 s)."""
    key = hashlib.sha256(json.dumps([*RECIPE, MIRROR]).encode()).hexdigest()[:16]
    root = cache / "node-root" / key
    if (root / "usr" / "bin" / "skopeo").is_file():
        return root
    partial = root.with_name(f"{key}.partial")
    if os.geteuid() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    elif partial.exists():  # owned by subordinate ids: removed from inside the namespace
        runner.run([*_namespace(), "rm", "-rf", str(partial)])
    partial.parent.mkdir(parents=True, exist_ok=True)
    runner.run([*RECIPE, str(partial), MIRROR])
    partial.replace(root)
    return root


def _namespace() -> list[str]:
    """Nothing as root; as an ordinary user, the user namespace mmdebstrap made the root in."""
    return [] if os.geteuid() == 0 else ["mmdebstrap", "--unshare-helper"]


def enter(root: Path) -> list[str]:
    """The command prefix that runs a program inside the root."""
    return [*_namespace(), "/usr/sbin/chroot", str(root)]


def install(root: Path, path: str, text: str, runner: ProcessRunner) -> None:
    """Write text to the absolute path inside the root, as the root's own superuser (an
    ordinary user cannot write a root made in unshare mode from outside)."""
    script = 'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"'
    runner.run([*enter(root), "sh", "-c", script, "sh", path, text])
