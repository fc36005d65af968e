from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.fake_registry import FakeRegistry


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    """A started FakeRegistry on 127.0.0.1, stopped after the test."""
    registry = FakeRegistry()
    registry.host = registry.start()
    yield registry
    registry.stop()


@pytest.fixture
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any connection or child process fails the test, naming what was attempted."""
    attempted: list[str] = []

    def connect(self: socket.socket, address: object) -> None:
        attempted.append(f"connect {address}")
        raise AssertionError(f"a connection was attempted: {address}")

    def popen(*args: object, **kwargs: object) -> None:
        attempted.append(f"process {args[1] if len(args) > 1 else kwargs.get('args')}")
        raise AssertionError("a child process was started")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    yield attempted
