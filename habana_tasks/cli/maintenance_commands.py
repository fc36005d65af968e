"""The library's maintenance commands, as wiring: load the inputs, call the one service that
owns the work, render what it returns, and give the exit code (core.errors holds the table)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml
from rich.console import Console

from habana_tasks.build import evidence, failure_records, service
from habana_tasks.build.driver_package import sha256_file
from habana_tasks.cli import tables
from habana_tasks.cli.commands import announcer, load_inputs, write_output
from habana_tasks.cli.progress import make_console
from habana_tasks.cli.tables import print_line
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.maintenance import discover as discovery
from habana_tasks.maintenance import kmm, preflight, prune, site, status, verify
from habana_tasks.registry.auth import credentials_from as credentials
from habana_tasks.registry.client import RegistryClient
from habana_tasks.trust import cosign, policy


def kmm_module(
    project: Project,
    driver: str,
    versions: str | None = None,
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
    sign_key_secret: str | None = None,
    sign_cert_secret: str | None = None,
    signed_repository: str | None = None,
    by_tag: bool = False,
) -> str:
    """A KMM Module (YAML) mapping every kernel whose image the repository holds for driver,
    each to the digest verified now (by_tag: to its tag); with both secrets, KMM signs each
    image in the cluster and pushes the signed copy."""
    config = load_inputs(project, versions)
    sign = kmm.signing_request(config, sign_key_secret, sign_cert_secret, signed_repository)
    registry = RegistryClient(config.insecure_registries)

    pin = verify.pinner(
        config, registry, lambda: service.make_podman(announcer(make_console(stderr=True))),
        project.root, project.verify_work,
    )  # fmt: skip
    module, mapped = kmm.library_module(
        config, driver, registry, name=name, namespace=namespace, sign=sign,
        pin=None if by_tag else pin,
    )  # fmt: skip
    return kmm.machine_config_note(mapped) + yaml.safe_dump(module, sort_keys=False)


def prune_command(
    project: Project,
    versions: str | None = None,
    *,
    older_than: int | None = None,
    apply: bool = False,
    console: Console | None = None,
) -> int:
    """List (and with apply, delete by digest) tags the matrix no longer names."""
    console = console or make_console()
    config = load_inputs(project, versions)
    registry = RegistryClient(config.insecure_registries)
    count, outcomes = prune.prune_library(
        config, registry, older_than_days=older_than, apply=apply, now=datetime.now(UTC)
    )
    console.print(tables.prune_table(config.repository, outcomes, apply))
    print_line(console, f"{count} tag(s), {len(outcomes)} to prune")
    return errors.exit_code_for(o.failure for o in outcomes)


def cache_command(
    project: Project,
    versions: str | None = None,
    *,
    clear: bool = False,
    console: Console | None = None,
) -> int:
    """The compile cache's entries, size, hits and misses; with clear, every entry removed."""
    console = console or make_console()
    cache = service.compile_cache(project, load_inputs(project, versions))
    try:
        if clear:
            removed = cache.clear()
            word = "entry" if removed == 1 else "entries"
            print_line(console, f"compile cache cleared: {removed} {word} removed")
        stats = cache.stats()
    except OSError as exc:
        raise errors.HostError(f"compile cache {cache.root}: {exc.strerror}") from exc
    print_line(console, f"compile cache: {cache.root}")
    console.print(tables.cache_table(stats))
    return errors.OK


def discover(
    project: Project,
    versions: str | None = None,
    *,
    minors: Sequence[str] = (),
    arches: Sequence[str] = (),
    drivers: Sequence[str] = (),
    release_repository: str | None = None,
    authfile: str | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> int:
    """Add the kernels of the requested OpenShift releases to versions.toml (comments kept)."""
    console = console or make_console()
    config = load_inputs(project, versions, authfile)
    registry = RegistryClient(config.insecure_registries, credentials=credentials(authfile))
    run = discovery.run_discovery(
        config,
        registry,
        minors=minors,
        arches=arches,
        drivers=drivers,
        release_repository=release_repository,
        dry_run=dry_run,
    )
    tables.show_discovery(console, run, {t.kernel for t in config.targets}, config.path)
    return errors.OK


def preflight_command(
    project: Project,
    versions: str | None = None,
    *,
    openshift: Sequence[str] = (),
    nodes: str | None = None,
    drivers: Sequence[str] = (),
    arch: str = "x86_64",
    release_repository: str | None = None,
    authfile: str | None = None,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """Does the library hold a current, load-tested (and signed) image for every kernel the
    given OpenShift releases or nodes run, for every driver? 0 only when every answer is yes."""
    console = console or make_console()
    config = load_inputs(project, versions, authfile)
    registry = RegistryClient(config.insecure_registries, credentials=credentials(authfile))
    report = preflight.run_preflight(
        config,
        registry,
        lambda targets: service.resolve_and_plan(project, config, targets),
        openshift=openshift,
        nodes=Path(nodes) if nodes else None,
        drivers=drivers,
        arch=arch,
        release_repository=release_repository,
    )
    tables.show_preflight(console, report, config.repository, output_format)
    return report.exit_code


def verify_command(
    project: Project,
    versions: str | None = None,
    kernel: str | None = None,
    driver: str | None = None,
    *,
    image: str | None = None,
    output_format: str = "table",
    console: Console | None = None,
) -> int:
    """cosign's verification of each published image, then its attestations against it."""
    console = console or make_console()
    config = load_inputs(project, versions)
    targets = config.select(kernel, driver)
    if image and len(targets) != 1:
        raise errors.UsageError("--image verifies one image: name its --kernel (and --driver)")
    podman = service.make_podman(announcer(console))
    registry = RegistryClient(config.insecure_registries)
    checker = verify.verifier(config, registry, podman, project.root, project.verify_work)
    results = checker.verify(targets, image)
    if output_format == "json":
        console.print_json(verify.to_json(results))
    else:
        console.print(tables.verify_table(results))
    return verify.exit_code(results)


def trust_policy(
    project: Project,
    versions: str | None = None,
    form: str = "policy-json",
    openshift: str | None = None,
) -> str:
    """The node-side configuration that admits only the library's signed images."""
    config = load_inputs(project, versions)
    key = cosign.public_key(verify.public_key_of(config))
    return policy.render(form, config.repository, key, openshift)


def site_command(
    project: Project,
    versions: str | None = None,
    *,
    output: str = "site",
    openshift: Sequence[str] = (),
    nodes: str | None = None,
    console: Console | None = None,
) -> int:
    """The library page (output/index.html) from the state `status` resolves; with releases or
    nodes, their coverage as `preflight` answers it. The exit code is status's (or preflight's)."""
    console = console or make_console()
    config = load_inputs(project, versions)
    page = Path(output).expanduser() / "index.html"
    if page.is_dir() or (page.exists() and not page.is_file()):
        raise errors.UsageError(
            f"--output {output!r}: expected a folder whose index.html is a file or absent "
            f"({page} is not a file)"
        )
    # A nodes file is read before any request: a bad one ends the command with exit 2.
    node_sources = preflight.node_kernels(Path(nodes)) if nodes else []
    found = status.library_status(project, config)
    coverage: list[site.Coverage] = []
    code = errors.OK if found.ok else errors.UNKNOWN_STATE
    problems = [*found.problems]
    if openshift or nodes:  # answered from the state status resolved (no pair asked again)
        repository = config.discover.release_repository
        releases = preflight.release_kernels(found.run.registry, repository, openshift)
        report = preflight.from_resolved(config, found.run, [*releases, *node_sources], found.tags)
        coverage = [
            site.Coverage(a.origin, a.kernel, a.driver, a.ok, a.detail) for a in report.answers
        ]
        problems += report.problems
        code = max(code, report.exit_code)
    run = site.RunInfo(
        datetime.now(UTC),
        f"habana-tasks {evidence.TOOL_VERSION} ({failure_records.tool_digest()})",
        site.shown_path(config.path, project.root),
        sha256_file(config.path),
        config.repository,
        frozenset(config.insecure_registries),
    )
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.UsageError(f"--output {output!r}: cannot make it: {exc.strerror}") from exc
    write_output(page, site.render(found.items, run, coverage, problems))
    print_line(console, found.summary)
    print_line(console, f"{len(found.items)} pair(s): {page}")
    return code
