from __future__ import annotations

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
