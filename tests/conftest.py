from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tools(*tools: str) -> None:
    """Skip loudly when a real tool is missing (CI installs them all, so nothing skips there)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SKIPPED: needs {', '.join(missing)} on PATH (run .ci/run's install step)")
