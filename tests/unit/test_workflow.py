"""The library workflow as GitHub would run it: its triggers, what a pull request may do, the
matrix's bound, and every `invoke` line naming a task and options that exist (lint checks the
file against the workflow schema)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml
from invoke.collection import Collection
from invoke.parser import Parser
from invoke.parser.context import ParserContext

import tasks
from habana_tasks.cli import arguments
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "library.yml"
# What can change an image or the plan: a push touching any of it builds.
PRODUCT = {"versions.toml", "Dockerfile", "habana_tasks/**", "tasks.py", "pyproject.toml"}


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def triggers() -> dict[str, Any]:
    data = workflow()
    found = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert isinstance(found, dict)
    return found


def invoke_lines(job: dict[str, Any]) -> list[list[str]]:
    """Every `invoke ...` command of a job's run steps, split as the shell would (variables
    left as written)."""
    lines = []
    for step in job["steps"]:
        for line in str(step.get("run", "")).splitlines():
            match = re.search(r"\binvoke (.+?)(?:\s*(?:>>?|\|\|)|$)", line)
            if match:
                lines.append(shlex.split(match.group(1)))
    return lines


def test_it_builds_daily_on_changes_to_the_default_branch_and_plans_pull_requests() -> None:
    on = triggers()
    assert set(on) == {"schedule", "push", "pull_request", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"]
    assert set(on["push"]["paths"]) >= PRODUCT
    assert set(on["pull_request"]["paths"]) == set(on["push"]["paths"])


def test_a_pull_request_plans_only_without_secrets_or_push() -> None:
    jobs = workflow()["jobs"]
    assert "github.event_name != 'pull_request'" in jobs["build"]["if"]
    for step in jobs["plan"]["steps"]:
        if "secrets." in yaml.safe_dump(step):
            assert step["if"] == "github.event_name != 'pull_request'", step
    assert jobs["plan"]["permissions"]["packages"] == "read"
    plan = invoke_lines(jobs["plan"])
    assert ["matrix", "--max-jobs", "256", "--format", "markdown"] in plan


def test_the_matrix_stays_within_githubs_limit_and_each_job_builds_its_batch() -> None:
    jobs = workflow()["jobs"]
    matrix_lines = [line for line in invoke_lines(jobs["plan"]) if line[0] == "matrix"]
    assert len(matrix_lines) == 2  # the matrix, and its summary
    for line in matrix_lines:
        assert int(line[line.index("--max-jobs") + 1]) <= arguments.MAX_JOBS[1] == 256
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert invoke_lines(jobs["build"]) == [["build-all", "--only", "${ONLY}"]]
    assert jobs["build"]["steps"][-2]["env"]["ONLY"] == "${{ matrix.only }}"
    assert jobs["summary"]["needs"] == "build"
    assert invoke_lines(jobs["summary"]) == [["summary", "--reports", "reports"]]


def test_every_invoke_line_parses_with_the_tasks_own_arguments() -> None:
    """invoke's own parser: an option a task lacks, or a flag given a value, is a ParseError."""
    collection = Collection.from_module(tasks)
    contexts = [
        ParserContext(name=name, args=collection[name].get_arguments())
        for name in collection.task_names
    ]
    # The preflight step builds its arguments in a shell array, one --openshift per release.
    array = {"${args[@]}": ["--openshift", "4.16.12"]}
    for job in workflow()["jobs"].values():
        for written in invoke_lines(job):
            line = [word for token in written for word in array.get(token, [token])]
            parsed = Parser(contexts=contexts).parse_argv(line)
            assert [context.name for context in parsed] == [line[0]]


def test_each_batch_restores_the_compile_cache_of_its_kernels() -> None:
    """A flavour, base or label change rebuilds every pair without compiling: each batch starts
    from its kernels' compiled files of earlier runs (entries are keyed by content)."""
    steps = workflow()["jobs"]["build"]["steps"]
    cache = next(s for s in steps if str(s.get("uses", "")).startswith("actions/cache@"))
    assert cache["with"]["path"] == ".cache/compile"
    # The matrix's bounded key for the batch's kernels (a list of kernels may pass 512 chars).
    assert cache["with"]["key"].startswith("compile-${{ matrix.cache_key }}-")
    assert cache["with"]["restore-keys"] == "compile-${{ matrix.cache_key }}-"
    build = next(s for s in steps if "invoke build-all" in str(s.get("run", "")))
    assert steps.index(cache) < steps.index(build)


def test_cosign_is_installed_pinned_by_commit_and_its_secrets_never_echoed() -> None:
    build = workflow()["jobs"]["build"]
    (installer,) = [s for s in build["steps"] if str(s.get("uses", "")).startswith("sigstore/")]
    action, _, commit = installer["uses"].partition("@")
    assert action == "sigstore/cosign-installer" and re.fullmatch("[0-9a-f]{40}", commit)
    # cosign 2: signatures as the .sig attachments containers/image reads.
    assert installer["with"]["cosign-release"].startswith("v2.")
    (step,) = [s for s in build["steps"] if "COSIGN_KEY" in s.get("env", {})]
    assert step["env"]["COSIGN_PASSWORD"] == "${{ secrets.COSIGN_PASSWORD }}"
    script = step["run"]
    assert "umask 077" in script and "set -x" not in script
    assert 'echo "${COSIGN' not in script and "echo ${COSIGN" not in script


def uses(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A job's action steps by action name (without the version)."""
    return {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}


def test_the_library_page_is_published_after_the_summary_and_never_from_a_pull_request() -> None:
    jobs = workflow()["jobs"]
    site, pages, plan = jobs["site"], jobs["pages"], jobs["plan"]
    assert site["needs"] == ["plan", "summary"] and "always()" in site["if"]
    assert "github.event_name != 'pull_request'" in site["if"]
    assert invoke_lines(site) == [["site", "--output", "site"]]
    assert uses(site)["actions/upload-pages-artifact"]["with"]["path"] == "site/"
    assert "github.event_name != 'pull_request'" in pages["if"]
    assert pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert "actions/deploy-pages" in uses(pages)
    # A pull request's plan job writes the page and uploads it as an artifact instead.
    assert ["site", "--output", "site"] in invoke_lines(plan)
    (page_step,) = [s for s in plan["steps"] if "invoke site" in str(s.get("run", ""))]
    upload = uses(plan)["actions/upload-artifact"]
    pull_request = "github.event_name == 'pull_request'"
    assert page_step["if"] == upload["if"] == pull_request
    assert upload["with"] == {"name": "library-page", "path": "site/"}


def test_the_build_steps_keys_become_files_and_leave_the_environment(tmp_path: Path) -> None:
    """The step's own script, run by bash with canary secrets: the tool (a stand-in `invoke`
    that records its environment) sees the key files, 0600, but neither key in a variable; the
    files are gone when the step ends."""
    (step,) = [s for s in workflow()["jobs"]["build"]["steps"] if "COSIGN_KEY" in s.get("env", {})]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("invoke", 'env > "$PWD/seen-env"; stat -c %a "$HABANA_SIGNING_KEY" .cache/cosign.key'
         ' > "$PWD/seen-modes"'),
        ("git", "echo 1700000000"),
    ):  # fmt: skip
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "checkout"
    work.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RUNNER_TEMP": str(tmp_path),
        "SIGNING_KEY": "canary-module-key",
        "COSIGN_KEY": "canary-cosign-key",
        "COSIGN_PASSWORD": "canary-password",
        "ONLY": "a,b",
    }
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, env=env, check=True)
    seen = (work / "seen-env").read_text()
    assert "canary-module-key" not in seen and "canary-cosign-key" not in seen
    assert (work / "seen-modes").read_text().split() == ["600", "600"]
    assert not (tmp_path / "signing_key.priv").exists()
    assert not (work / ".cache" / "cosign.key").exists()
