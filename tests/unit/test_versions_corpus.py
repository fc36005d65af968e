"""Every file of the bad-input corpus is refused at parse time: exit 2, every expected problem
named, and nothing fetched or started (sockets and processes are forbidden while it runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.errors import ConfigError
from tests.conftest import ROOT, RecordProperty, invoke_argv
from tests.corpus.versions import CASES, GOOD, Case
from tests.reliability import CLI_OUTCOME

pytestmark = pytest.mark.reliability("bad versions files")


def refusal(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        commands.build(
            Project(ROOT, cache_dir=path.parent / "cache"),
            str(path),
            options=BuildOptions(dry_run=True),
            console=Console(file=None, quiet=True),
        )
    return info.value


def test_the_corpus_is_large_and_its_good_file_is_accepted(
    tmp_path: Path, no_side_effects: list[str]
) -> None:
    assert len(CASES) >= 100
    path = tmp_path / "versions.toml"
    path.write_text(GOOD)
    assert len(versions_file.load(path).targets) == 3


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_is_refused_before_any_side_effect(
    case: Case, tmp_path: Path, no_side_effects: list[str], record_property: RecordProperty
) -> None:
    record_property("outcome", "refused")
    path = tmp_path / "versions.toml"
    path.write_bytes(case.content)
    error = refusal(path)
    assert error.exit_code == 2
    for line in error.problems:
        assert line.startswith(f"{path}: "), line  # every problem names the file
        assert "\n" not in line
    text = "\n".join(error.problems)
    for expected in case.expected:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert not (tmp_path / "cache").exists()
    assert no_side_effects == []


# A few through the real command line: exit 2, one line per problem, never a traceback.
CLI_CASES = [
    c
    for c in CASES
    if c.name.split("/")[1]
    in (
        "latin-1",
        "binary",
        "empty",
        "release",
        "package-ftp",
        "entry-with-three-problems",
        "insecure-with-scheme",
        "rhel-contradicts-release",
        "nul-byte",
        "kernels-not-array",
    )
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_the_command_line_refuses_it_with_exit_2_and_no_traceback(
    case: Case, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("outcome", CLI_OUTCOME)
    path = tmp_path / "versions.toml"
    path.write_bytes(case.content)
    done = subprocess.run(
        invoke_argv("build-all", "--dry-run", "--versions", str(path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    for expected in case.expected:
        assert expected in output
