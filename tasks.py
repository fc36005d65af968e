"""invoke tasks: argument parsing only; the work is in habana_tasks.commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from invoke import Context, Exit, task

sys.path.insert(0, str(Path(__file__).parent))

from habana_tasks import commands
from habana_tasks.errors import HabanaError

PROJECT = commands.Project(Path(__file__).resolve().parent)


def _run(call: Callable[[], int | None]) -> None:
    try:
        code = call()
    except HabanaError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None
    if code:
        raise Exit(code=code)


@task(
    help={
        "kernel": "full kernel release (uname -r), as listed in versions.toml",
        "driver": "driver version (default: every driver listed for that kernel)",
        "versions": "versions file (default: versions.toml)",
        "force": "rebuild even when the image is up to date",
        "dry-run": "print the plan (target, image, action, reason) and stop",
        "push": "push checked images (default); --no-push only builds and checks",
        "smoke": "load-test in the target kernel before pushing (default); --no-smoke skips it",
    }
)
def build(
    c: Context,
    kernel: str,
    driver: str | None = None,
    versions: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    smoke: bool = True,
) -> None:
    """Build, check, load-test and push the image(s) of one kernel."""
    _run(lambda: commands.build(PROJECT, versions, kernel, driver, force=force, dry_run=dry_run,
                                push=push, smoke=smoke))  # fmt: skip


@task(
    help={
        "versions": "versions file (default: versions.toml)",
        "jobs": "targets built at once (default 1)",
        "force": "rebuild every target, up to date or not",
        "dry-run": "print the plan (target, image, action, reason) and stop",
        "push": "push checked images (default); --no-push only builds and checks",
        "smoke": "load-test in the target kernel before pushing (default); --no-smoke skips it",
    }
)
def build_all(
    c: Context,
    versions: str | None = None,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    smoke: bool = True,
) -> None:
    """Build, check, load-test and push every kernel x driver pair that is missing or stale."""
    _run(lambda: commands.build(PROJECT, versions, jobs=jobs, force=force, dry_run=dry_run,
                                push=push, smoke=smoke))  # fmt: skip


@task(
    help={
        "kernel": "full kernel release (default: every kernel in the versions file)",
        "driver": "driver version (default: every driver listed for the kernel)",
        "versions": "versions file (default: versions.toml)",
        "image": "test this image (tag or digest) instead of the library's, for one kernel",
        "timeout": "seconds before a guest that has not finished is killed (default 120)",
    }
)
def smoke(
    c: Context,
    kernel: str | None = None,
    driver: str | None = None,
    versions: str | None = None,
    image: str | None = None,
    timeout: float = 120.0,
) -> None:
    """Boot each image's exact kernel under qemu and load its driver as KMM does."""
    _run(lambda: commands.smoke(PROJECT, versions, kernel, driver, image=image, timeout=timeout))


@task(help={"versions": "versions file naming the kernels (default: the example)"})
def upstream_up(c: Context, versions: str | None = None) -> None:
    """Start the local upstream (registry, package server) and build its images and RPMs."""
    _run(lambda: commands.upstream_up(PROJECT, versions))


@task
def upstream_down(c: Context) -> None:
    """Stop the local upstream's services (their data stays in .cache/upstream)."""
    _run(lambda: commands.upstream_down(PROJECT))


@task(
    help={
        "jobs": "targets built at once (default 1)",
        "smoke": "load-test each image before pushing (default); --no-smoke skips it",
    }
)
def example(c: Context, jobs: int = 1, smoke: bool = True) -> None:
    """Build the example library end to end against the local upstream and print it."""
    _run(lambda: commands.example(PROJECT, jobs=jobs, smoke=smoke))
