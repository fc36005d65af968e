"""The example library end to end against the local upstream: `invoke upstream-up`,
`invoke upstream-down` and `invoke example`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devtools import local_upstream
from habana_tasks.build import labels
from habana_tasks.build import service as build_service
from habana_tasks.build.reporter import make_console
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands, tables
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage

EXAMPLE_VERSIONS = Path("examples/local/versions.toml")


def upstream(project: Project) -> local_upstream.Upstream:
    return local_upstream.Upstream(local_upstream.default_root(project.root))


def upstream_up(
    project: Project,
    versions: str | None = None,
    console: Console | None = None,
    podman: Podman | None = None,
) -> None:
    """Stand up the local upstream with what the example versions file names."""
    console = console or make_console()
    config = project.load(versions or str(project.root / EXAMPLE_VERSIONS))
    started = time.monotonic()
    console.print("local upstream: registry, package server, base and toolkit images, RPMs")
    local_upstream.up(
        upstream(project),
        podman or build_service.make_podman(commands.announcer(console)),
        kernels=[t.kernel for t in config.targets],
        drivers=[t.driver for t in config.targets],
    )
    tables.print_line(console, f"local upstream ready in {time.monotonic() - started:.1f} s")


def upstream_down(project: Project, console: Console | None = None) -> None:
    console = console or make_console()
    stopped = local_upstream.stop(upstream(project))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def example(
    project: Project, jobs: int = 1, load_test: bool = True, console: Console | None = None
) -> int:
    """The example library end to end: local upstream, build-all, and the library table."""
    console = console or make_console()
    versions = str(project.root / EXAMPLE_VERSIONS)
    podman = build_service.make_podman(commands.announcer(console))
    upstream_up(project, versions, console, podman)
    config = project.load(versions)
    run = commands.run_build(
        project,
        config,
        config.targets,
        console,
        BuildOptions(jobs=jobs, load_test=load_test),
        podman,
    )
    registry = RegistryClient(config.insecure_registries)
    held = [(t, registry.inspect(t.image)) for t in config.targets]
    console.print(library_table(config.repository, held))
    return run.exit_code


def library_table(repository: str, held: Iterable[tuple[BuildTarget, RemoteImage]]) -> Table:
    """What the repository holds for every target: the library as a user would publish it."""
    columns = ("kernel", "driver", "image", "digest", "size", "load-tested", "created")
    out = tables.table(f"library: {repository}", *columns)
    for target, remote in held:
        if remote.existence is Existence.PRESENT:
            size = f"{(remote.size or 0) / 1e6:.1f} MB"
            created = remote.labels.get(labels.OCI + "created", "")
            tested = remote.labels.get(labels.LOAD_TESTED, "no label")
            tables.add_row(
                out,
                target.kernel,
                target.driver,
                target.image,
                remote.digest or "",
                size,
                tested,
                created,
            )
        else:
            tables.add_row(
                out,
                target.kernel,
                target.driver,
                target.image,
                remote.existence.value,
                remote.error or "",
                "",
                "",
            )
    return out
