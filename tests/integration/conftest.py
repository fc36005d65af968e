"""A fresh local upstream per test session: a new registry (random port) and package server,
with base and toolkit images from the shared content cache (podman's layer cache keeps it fast)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from devtools import local_upstream
from habana_tasks import commands, config
from habana_tasks.podman import BuildSpec, Podman
from habana_tasks.process import ProcessRunner
from habana_tasks.project import Project
from tests.conftest import ROOT, free_port, require_tools

KERNELS = ("6.1.0-55-amd64", "6.1.0-56-amd64")
DRIVER = "6.1.0-1"


@dataclass(frozen=True)
class UpstreamFixture:
    upstream: local_upstream.Upstream
    runner: ProcessRunner

    def versions(
        self,
        path: Path,
        kernels: tuple[str, ...] = KERNELS,
        extra: str = "",
        repository: str = "library/habana-ai-driver",
        modules: tuple[str, ...] = local_upstream.EXAMPLE_MODULES,
    ) -> Path:
        u = self.upstream
        entries = "".join(
            f'\n[[kernels]]\nrelease = "{k}"\ndrivers = ["{DRIVER}"]\n' for k in kernels
        )
        path.write_text(
            f'[library]\nrepository = "{u.registry}/{repository}"\n'
            f'source = "https://example.invalid/src"\ninsecure_registries = ["{u.registry}"]\n'
            f'[base]\nimage = "{u.base_image}"\n'
            f'[toolkit]\nimage = "{u.registry}/upstream/driver-toolkit:{{kernel}}"\n'
            f'[driver]\npackage_url = "{u.package_url("habanalabs-{driver}.el8.noarch.rpm")}"\n'
            f"modules = {json.dumps(list(modules))}\n"
            f"{extra}{entries}"
        )
        return path

    def build_and_push(self, context: Path, image: str) -> None:
        """Build a Containerfile in context (with the host's isolation) and push it."""
        podman = Podman(self.runner)
        podman.build(
            BuildSpec(context, context / "Containerfile", context / "image-id", tags=(image,))
        )
        self.runner.run(["podman", "push", "--quiet", "--tls-verify=false", image])


def route_through(source: Path, target: Path, key: str, registry: str, proxy: str) -> Path:
    """A copy of a versions file whose `key` (repository, or an image template) names the
    proxy instead of the registry behind it; the proxy is an insecure registry too."""
    text = source.read_text().replace(f'{key} = "{registry}/', f'{key} = "{proxy}/')
    target.write_text(
        text.replace("insecure_registries = [", f'insecure_registries = ["{proxy}", ')
    )
    return target


@pytest.fixture(scope="session")
def test_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamFixture]:
    require_tools(
        "podman",
        "docker-registry",
        "mmdebstrap",
        "rpmbuild",
        "modprobe",
        "modinfo",
        "qemu-system-x86_64",
    )
    root = tmp_path_factory.mktemp("upstream")
    upstream = local_upstream.Upstream(
        root, registry_port=free_port(), http_port=free_port(), cache=ROOT / ".cache" / "upstream"
    )
    runner = ProcessRunner()
    local_upstream.up(upstream, Podman(runner), KERNELS, [DRIVER])
    yield UpstreamFixture(upstream, runner)
    local_upstream.stop(upstream)


@pytest.fixture(scope="module")
def library(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Project, Path]]:
    """The example pair built, load-tested and pushed (skipped when an earlier module did)."""
    project = Project(ROOT, cache_dir=tmp_path_factory.mktemp("cache"))
    versions = test_upstream.versions(tmp_path_factory.mktemp("v") / "versions.toml")
    cfg = config.load(versions)
    run = commands.run_build(project, cfg, cfg.targets, console=Console(file=io.StringIO()))
    assert all(r.ok and r.load_tested for r in run.results), run.results
    yield project, versions
