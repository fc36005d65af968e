"""Exit codes are a contract scripts act on: one per class of outcome, listed in every task's
--help and in README.md, and given by the command line itself (invoke's real parser, in this
process)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from invoke.collection import Collection

import tasks
from habana_tasks.core import errors, http_client
from habana_tasks.registry.manifests import OCI_MANIFEST
from tests.conftest import ROOT
from tests.fake_registry import FakeRegistry
from tests.invoke_cli import invoke

TASKS = sorted(Collection.from_module(tasks).task_names)


@pytest.mark.parametrize("name", TASKS)
def test_every_task_lists_the_exit_codes_in_its_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = invoke(["--help", name], capsys)
    assert code == 0
    listed = {int(n) for n in re.findall(r"^\s+(\d+)  ", out, re.M)}
    assert listed == {code for code, _ in errors.EXIT_CODES}


def test_the_readme_table_matches_the_codes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", readme, re.M))
    assert {int(code): text.strip() for code, text in rows.items()} == dict(errors.EXIT_CODES)


def test_a_registry_that_cannot_answer_ends_status_with_exit_4(
    fake: FakeRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The library's repository answers 503 (every retry): its state is unknown, never absent.
    The back-off between retries is asked for, and recorded instead of slept."""
    waits: list[float] = []
    real_init = http_client.HTTPClient.__init__

    def recording(self: http_client.HTTPClient, retry: http_client.RetryPolicy | None = None,
                  sleep: object = None) -> None:  # fmt: skip
        real_init(self, retry, waits.append)

    monkeypatch.setattr(http_client.HTTPClient, "__init__", recording)
    fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    fake.add_image("dtk", "6.1.0-56-amd64", {}, OCI_MANIFEST)
    fake.hook = lambda path: (503, {}, b"") if path.startswith("/v2/lib/driver/") else None
    package = tmp_path / "habanalabs.rpm"
    package.write_bytes(b"not an rpm")
    versions = tmp_path / "versions.toml"
    versions.write_text(
        f'[library]\nrepository = "{fake.host}/lib/driver"\n'
        f'insecure_registries = ["{fake.host}"]\n'
        f'[base]\nimage = "{fake.host}/base/debian:12"\n'
        f'[toolkit]\nimage = "{fake.host}/dtk:{{kernel}}"\n'
        f'[driver]\npackage_url = "{package.as_uri()}"\n'
        '[[kernels]]\nrelease = "6.1.0-56-amd64"\ndrivers = ["6.1.0-1"]\n',
        encoding="utf-8",
    )
    code, out, err = invoke(["status", "--versions", str(versions)], capsys)
    assert code == errors.UNKNOWN_STATE, (out, err)
    assert "unknown" in out
    assert waits and all(wait > 0 for wait in waits), waits


def test_a_bug_is_exit_70_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("habana_tasks.cli.commands.status_command", broken)
    code, _, err = invoke(["status"], capsys)
    assert code == errors.INTERNAL_ERROR_CODE
    assert err.strip().startswith("internal error: ZeroDivisionError") and "\n" not in err.strip()
