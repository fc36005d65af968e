"""The package's rooms import one way, from the command line down to the primitives: a module
that imports upwards fails here, not in a review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "habana_tasks"
# Each room and the rooms it may import (its own modules are always allowed).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "config": frozenset({"core"}),
    "registry": frozenset({"core", "config"}),
    "engine": frozenset({"core", "config"}),
    "verification": frozenset({"core", "config", "registry", "engine"}),
    "trust": frozenset({"core", "config", "registry", "engine", "verification"}),
    "build": frozenset({"core", "config", "registry", "engine", "verification", "trust"}),
    "maintenance": frozenset(
        {"core", "config", "registry", "engine", "verification", "trust", "build"}
    ),
    "cli": frozenset(
        {"core", "config", "registry", "engine", "verification", "trust", "build", "maintenance"}
    ),
}
LARGEST_MODULE = 400  # lines
LARGEST_WIRING = 250  # lines of the command layer


def imported_rooms(path: Path) -> set[str]:
    """The rooms of habana_tasks a module imports from (absolute imports are the house rule)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "habana_tasks" and len(parts) > 1 and parts[1] in MAY_IMPORT:
                rooms.add(parts[1])
    return rooms


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_room() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}
    assert {p.parent.name for p in modules()} == set(MAY_IMPORT)


@pytest.mark.parametrize("path", modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_run_one_way(path: Path) -> None:
    room = path.parent.name
    upward = imported_rooms(path) - MAY_IMPORT[room] - {room}
    assert not upward, f"{room}/{path.name} imports {sorted(upward)}"


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_each_room_says_what_it_owns(room: str) -> None:
    """The docstring's "May import" line names exactly the rooms the rule above allows."""
    doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text())) or ""
    rule = next(line for line in doc.splitlines() if line.startswith("May import"))
    named = {word.strip(",.;") for word in rule.split()} & set(MAY_IMPORT)
    if "every other room" in rule:
        named = set(MAY_IMPORT) - {room}
    assert named == MAY_IMPORT[room]


def test_modules_stay_small() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in modules()}
    too_large = {str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if n > LARGEST_MODULE}
    assert not too_large
    for wiring in (PACKAGE / "cli" / "commands.py", PACKAGE / "cli" / "maintenance_commands.py"):
        assert sizes[wiring] <= LARGEST_WIRING
    assert len((ROOT / "tasks.py").read_text(encoding="utf-8").splitlines()) <= LARGEST_WIRING


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "core" / "x.py"
    module.parent.mkdir()
    module.write_text(
        "from habana_tasks.build import plan\nimport habana_tasks.cli.tables\n", encoding="utf-8"
    )
    assert imported_rooms(module) == {"build", "cli"}


def compiled_patterns(path: Path) -> list[str]:
    """The literal patterns a module passes to re.compile."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "compile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value.removeprefix("^").removesuffix("\\Z"))
    return found


def test_each_grammar_has_one_copy() -> None:
    """A tag, digest or reference grammar written twice drifts apart; one module owns each."""
    seen: dict[str, str] = {}
    copies = []
    for path in modules():
        for pattern in compiled_patterns(path):
            if pattern in seen:
                copies.append(f"{pattern} in {seen[pattern]} and {path.name}")
            seen[pattern] = path.name
    assert not copies


def test_commands_do_not_load_what_only_a_signing_build_needs() -> None:
    """Every command starts by importing the command layer; the SBOM's schema validator (over a
    second of JSON Schema format checkers) loads only when an SBOM is made."""
    probe = (
        "import sys, habana_tasks.cli.commands, habana_tasks.cli.maintenance_commands; "
        "heavy = ('cyclonedx.validation', 'jsonschema'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout
