"""A node's container runtime library, for the tests that prove the node-side policy: a
Debian 13 root holding skopeo 1.18 (containers/image 5.34, the library CRI-O uses) and cosign,
made once per recipe with mmdebstrap under the cache. Debian 12's skopeo is built without
sigstore; this one enforces sigstoreSigned. Entered with chroot as root, and inside a user
namespace as an ordinary user."""

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
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    runner.run([*RECIPE, str(partial), MIRROR])
    partial.replace(root)
    return root


def enter(root: Path) -> list[str]:
    """The command prefix that runs a program inside the root."""
    if os.geteuid() == 0:
        return ["chroot", str(root)]
    return ["unshare", "--map-root-user", "--", "chroot", str(root)]
