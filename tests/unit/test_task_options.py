"""Every task's options as invoke shows them (names, short flags, help with its range and
default, kind, default, positional) and what each says to a value it refuses: unchanged against
the record kept in data/task_options.json, whatever declares them."""

from __future__ import annotations

import ast
import copy
import inspect
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from invoke.collection import Collection

import tasks
from habana_tasks.cli import options
from tests.invoke_cli import invoke

RECORD = Path(__file__).parent / "data" / "task_options.json"
# Refused by every check a task makes: not a kernel, driver, number, choice, tag, image,
# Kubernetes name or release, and a path whose directory does not exist.
PROBE = "/nonexistent\x01/x"
# Options that may be required get a good value while another is probed.
GOOD = {"kernel": "6.1.0-56-amd64", "driver": "6.1.0-1"}


def declared() -> dict[str, Any]:
    """Each task: its docstring and its options as invoke's parser and --help see them."""
    found: dict[str, Any] = {}
    collection = Collection.from_module(tasks)
    for name in sorted(collection.task_names):
        task = copy.deepcopy(collection[name])  # invoke consumes a task's help as it reads it
        found[name] = {
            "doc": inspect.getdoc(task.body),
            "options": [
                {
                    "names": list(argument.names),
                    "help": argument.help,
                    "kind": argument.kind.__name__,
                    "default": argument.default,
                    "positional": argument.positional,
                }
                for argument in task.get_arguments()
            ],
        }
    return found


def refusals(
    found: dict[str, Any], capsys: pytest.CaptureFixture[str], cwd: Path
) -> dict[str, str]:
    """`task --option PROBE` for each option that takes a value: the exit code and first line."""
    said: dict[str, str] = {}
    for name, task in found.items():
        for option in task["options"]:
            if option["kind"] == "bool":
                continue
            flag = f"--{option['names'][0]}"
            required = [
                f"--{o['names'][0]}={GOOD[o['names'][0]]}"
                for o in task["options"]
                if o["names"][0] in GOOD and o is not option
            ]
            code, _, err = invoke([name, *required, flag, PROBE], capsys)
            said[f"{name} {flag}"] = f"{code} {err.strip().splitlines()[0] if err.strip() else ''}"
    return said


def test_every_option_reads_as_recorded(
    capsys: pytest.CaptureFixture[str],
    no_side_effects: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    record = json.loads(RECORD.read_text())
    found = declared()
    assert found == record["tasks"]
    assert refusals(found, capsys, tmp_path) == record["refusals"]
    assert no_side_effects == []


def test_a_value_is_always_named(
    capsys: pytest.CaptureFixture[str], no_side_effects: list[str]
) -> None:
    """No option is positional, so `--help` after a task is never taken for a value; a required
    option left out is bad input (exit 2, one line naming it), before anything is done."""
    code, out, _ = invoke(["build", "--help"], capsys)
    assert code == 0 and "Build, check, load-test" in out
    for argv, flag in ((["build"], "--kernel"), (["kmm-module"], "--driver")):
        code, _, err = invoke(argv, capsys)
        assert code == 2 and err.strip().splitlines() == [err.strip()], err
        assert err.startswith(f"error: {flag} is required: "), err
    assert no_side_effects == []


def test_tasks_name_no_option_themselves() -> None:
    """tasks.py lists declared options; a flag literal or help text written there is a second
    place to keep in step."""
    tree = ast.parse(Path(tasks.__file__).read_text(encoding="utf-8"))
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert not [text for text in literals if text.startswith("--")]
    keywords = {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword)}
    assert not keywords & {"help", "iterable", "positional"}
    declared_twice = Counter(
        (o.name, o.help) for o in vars(options).values() if isinstance(o, options.Option)
    )
    assert [key for key, n in declared_twice.items() if n > 1] == []
