"""The package's rooms import one way, from the command line down to the primitives: a module
that imports upwards fails here, not in a review."""

from __future__ import annotations

import ast
import re
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
    """The package's and devtools' modules alike; the wiring (tasks.py and the command modules)
    smaller still."""
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in sources()}
    too_large = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > LARGEST_MODULE}
    assert not too_large
    for wiring in (PACKAGE / "cli" / "commands.py", PACKAGE / "cli" / "maintenance_commands.py"):
        assert sizes[wiring] <= LARGEST_WIRING
    assert sizes[ROOT / "tasks.py"] <= LARGEST_WIRING


def test_the_package_does_not_lean_on_devtools() -> None:
    """devtools (the local upstream, the benchmark) is left out of the wheel: nothing shipped
    may import it; tasks.py reaches it only inside the tasks that use it."""
    leaning = [str(p.relative_to(ROOT)) for p in modules() if "devtools" in imported_modules(p)]
    assert not leaning
    top = ast.parse((ROOT / "tasks.py").read_text(encoding="utf-8")).body
    assert "devtools" not in {
        a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names
    } | {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "core" / "x.py"
    module.parent.mkdir()
    module.write_text(
        "from habana_tasks.build import plan\nimport habana_tasks.cli.tables\n", encoding="utf-8"
    )
    assert imported_rooms(module) == {"build", "cli"}


RE_FUNCTIONS = {
    "compile",
    "match",
    "fullmatch",
    "search",
    "sub",
    "subn",
    "split",
    "findall",
    "finditer",
}


def patterns(path: Path) -> list[tuple[str, str | None]]:
    """Each literal pattern a module hands to `re`: (pattern, the module-level name it is kept
    under, or None when it is written inline in a call)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    named = {
        id(node.value): node.targets[0].id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "re"
            and node.func.attr in RE_FUNCTIONS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            text = node.args[0].value if isinstance(node.args[0], ast.Constant) else "<f-string>"
            name = named.get(id(node)) if node.func.attr == "compile" else None
            found.append((str(text).removeprefix("^").removesuffix("\\Z"), name))
    return found


def sources() -> list[Path]:
    """Everything that runs: the package, devtools and the task and session files."""
    return [*modules(), *sorted((ROOT / "devtools").glob("*.py")), ROOT / "tasks.py"]


def test_each_grammar_has_one_copy() -> None:
    """A grammar (a tag, a digest, an OpenShift minor) is compiled once, under a module-level
    name no other module uses: written inline, or twice, two copies drift apart."""
    seen: dict[str, str] = {}
    names: dict[str, str] = {}
    problems = []
    for path in sources():
        where = str(path.relative_to(ROOT))
        for pattern, name in patterns(path):
            if name is None:
                problems.append(f"{pattern!r} is written inline in {where}")
                continue
            if pattern in seen:
                problems.append(f"{pattern!r} in {seen[pattern]} and {where}")
            if name in names:
                problems.append(f"{name} in {names[name]} and {where}")
            seen[pattern], names[name] = where, where
    assert not problems


def test_the_grammar_checker_sees_inline_and_repeated_patterns(tmp_path: Path) -> None:
    module = tmp_path / "x.py"
    module.write_text(
        'import re\nA_RE = re.compile(r"^a+\\Z")\n'
        'def f(s):\n    return re.match(r"[0-9]+", s) or re.compile("b")\n',
        encoding="utf-8",
    )
    assert patterns(module) == [("a+", "A_RE"), ("[0-9]+", None), ("b", None)]


def test_presentation_is_the_command_lines() -> None:
    """Rich (the board, tables, the console) is imported by cli alone."""
    showing = {
        str(path.relative_to(PACKAGE))
        for path in modules()
        if path.parent.name != "cli" and "rich" in imported_modules(path)
    }
    assert not showing


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    found |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    return found


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


def test_no_test_module_imports_another() -> None:
    """What tests share lives in support modules (fakes, samples, keys), never in a test module:
    importing one runs its fixtures and parametrisation in another's collection."""
    importing = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        named = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        named += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        tests = [
            m for m in named if m.startswith("tests.") and m.rsplit(".", 1)[-1].startswith("test_")
        ]
        if tests:
            importing[str(path.relative_to(ROOT))] = tests
    assert not importing


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_the_architecture_page_lists_each_rooms_modules(room: str) -> None:
    """docs/architecture.md's table names every module of a room, and no module that is gone."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith(f"| `{room}` |"))
    listed = set(re.findall(r"`([a-z_]+)`", row.split("|")[3]))
    assert listed == {p.stem for p in (PACKAGE / room).glob("*.py") if p.stem != "__init__"}


HEAVY = (
    "habana_tasks.build", "habana_tasks.maintenance", "habana_tasks.verification",
    "habana_tasks.engine", "habana_tasks.registry", "requests", "rich", "cyclonedx",
)  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--versions", "{bad}"],
        ["build", "--kernel", "6.1.0-55-amd64", "--versions", "{bad}"],
        ["verify", "--versions", "{bad}"],
        ["build", "--kernel", "not a kernel"],
        ["trust-policy", "--format", "nope"],
    ],
)
def test_bad_input_is_refused_before_the_commands_modules_load(
    argv: list[str], tmp_path: Path
) -> None:
    """A refusal costs what reading the arguments and the versions file costs: none of the
    rooms below the configuration, nor the libraries only they use, is imported before it (the
    command layer's import time, bounded by what it may load)."""
    bad = tmp_path / "versions.toml"
    bad.write_text("[library]\nrepository = 5\n")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "invoke", *(a.format(bad=bad) for a in argv)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    loaded = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert sorted(m for m in loaded if m.startswith(HEAVY)) == []


def test_the_noxfile_imports_nox_and_the_standard_library_only() -> None:
    """nox runs where the product's dependencies may not be installed: the sessions install
    the product, the noxfile needs none of it."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }  # fmt: skip
    allowed = set(sys.stdlib_module_names) | {"nox", "__future__"}
    assert sorted(imported - allowed) == []
