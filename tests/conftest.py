from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from habana_tasks.core.process import find_tool

pytest_plugins = ("tests.reliability",)

ROOT = Path(__file__).resolve().parents[1]
# Under CI every real component must run: a missing tool is a failure, never a skip.
RecordProperty = Callable[[str, object], None]  # pytest's record_property fixture
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(condition: bool, what: str) -> None:
    """Skip loudly when a real part is missing; fail instead under CI (CI installs them all)."""
    if condition:
        return
    message = f"needs {what} (run scripts/install-deps)"
    if IN_CI:
        pytest.fail(f"CI=true and this real-component test cannot run: {message}")
    pytest.skip(f"SKIPPED: {message}")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if find_tool(t) is None]
    require(not missing, f"{', '.join(missing)} on PATH")


def invoke_argv(*args: str) -> list[str]:
    """The command line a user types (`invoke …`), run with this interpreter."""
    return [sys.executable, "-m", "invoke", *args]


# Variables the tool reads that change what it does: a developer's own settings must not change
# what a test sees, so every test starts without them and sets what it needs itself.
SUPPORTED_VARIABLES = (
    "HABANA_SIGNING_KEY",
    "HABANA_ISOLATION",
    "BUILDAH_ISOLATION",
    "HABANA_QEMU_ACCEL",
    "HABANA_CACHE_DIR",
    "HABANA_COMPILE_CACHE_DIR",
    "SOURCE_DATE_EPOCH",
    "REGISTRY_AUTH_FILE",
    "NETRC",
    "LANGUAGE",
    "COSIGN_PASSWORD",
)


@pytest.fixture(autouse=True)
def own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SUPPORTED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
