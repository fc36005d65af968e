"""The example library end to end against the local upstream: `invoke upstream-up`,
`invoke upstream-down` and `invoke example`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devtools import local_upstream
from habana_tasks.build import labels
from habana_tasks.build import service as build_service
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands, maintenance_commands, tables
from habana_tasks.cli.progress import make_console
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage
from habana_tasks.trust import cosign

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


def example_key(project: Project, runner: ProcessRunner, console: Console) -> None:
    """The example's own cosign key pair and its password (0600), made once under .cache: an
    example key, named so; a real library brings its own."""
    directory = project.root / ".cache" / "example-cosign"
    if (directory / "example-only.key").is_file() and (directory / "password").is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    (directory / "password").touch(mode=0o600)
    (directory / "password").write_text(password + "\n")
    (directory / "README").write_text(
        "An EXAMPLE cosign key pair, made by `invoke example` for the example library only.\n"
    )
    tool = cosign.find(runner, project.root)
    tool.run(
        ["generate-key-pair", "--output-key-prefix", str(directory / "example-only")],
        password=password,
    )
    console.print(f"example cosign key pair made in {directory} (an example key)")


def example(
    project: Project, jobs: int = 1, load_test: bool = True, console: Console | None = None
) -> int:
    """The example library end to end: local upstream, build-all (signed and attested), the
    library table, and `invoke verify` of every image."""
    console = console or make_console()
    versions = str(project.root / EXAMPLE_VERSIONS)
    podman = build_service.make_podman(commands.announcer(console))
    upstream_up(project, versions, console, podman)
    example_key(project, podman.runner, console)
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
    if run.exit_code != 0:
        return run.exit_code
    return maintenance_commands.verify_command(project, versions, console=console)


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
