"""Keys the tests make, and a build that signs with them: a module-signing certificate and key
(openssl, as a library's [signing] names them) and a cosign key pair (cosign itself, under a
known password that the tests then look for where it must never be)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from habana_tasks.config.targets import SigningFiles
from habana_tasks.core.process import ProcessRunner
from habana_tasks.trust import cosign
from tests.conftest import ROOT, invoke_argv, require_tools

KERNEL = "6.1.0-55-amd64"  # the integration library's first kernel

COSIGN_PASSWORD = "canary-cosign-0c4e1d"


def make_pair(directory: Path, name: str) -> SigningFiles:
    """A self-signed module-signing certificate (DER) and its key (PEM), as [signing] names them."""
    require_tools("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.der", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "30",
         "-batch", "-subj", f"/CN={name}", "-outform", "DER", "-out", str(cert),
         "-keyout", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    return SigningFiles(cert, key)


def cosign_key_pair(directory: Path) -> tuple[Path, Path]:
    """A cosign key pair made by cosign itself (the password from its environment)."""
    tool = cosign.find(ProcessRunner(), ROOT)
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tool.path, "generate-key-pair", "--output-key-prefix", str(directory / "cosign")],
        env={**os.environ, cosign.PASSWORD_VARIABLE: COSIGN_PASSWORD},
        check=True,
        capture_output=True,
    )
    return directory / "cosign.key", directory / "cosign.pub"


def invoke_task(
    cache: Path, *args: str, environment: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`invoke <args>` as a user runs it, its cache under `cache`."""
    return subprocess.run(
        invoke_argv(*args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache), **(environment or {})},
    )


def build_signed(
    versions: Path,
    cache: Path,
    *extra: str,
    password: str = COSIGN_PASSWORD,
    kernel: str = KERNEL,
    environment: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    done = invoke_task(
        cache, "build", "--kernel", kernel, "--versions", str(versions), *extra,
        environment={cosign.PASSWORD_VARIABLE: password, **(environment or {})},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def verify(versions: Path, cache: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    """`invoke verify --format json` as a user runs it: the exit code, each image's result."""
    done = invoke_task(cache, "verify", "--versions", str(versions), "--format", "json", *extra)
    try:
        results = json.loads(done.stdout)
    except ValueError:
        results = []
    return done.returncode, results, done.stdout + done.stderr
