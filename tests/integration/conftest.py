"""A fresh local upstream per test session: a new registry (random port) and package server,
with base and toolkit images from the shared content cache (podman's layer cache keeps it fast)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from devtools import local_upstream, vendor_packages
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import BuildSpec, Podman
from tests.conftest import ROOT, free_port, require_tools

KERNELS = ("6.1.0-55-amd64", "6.1.0-56-amd64")
COMPILE_CACHE_VARIABLE = "HABANA_COMPILE_CACHE_DIR"
DRIVER = "6.1.0-1"
# How a command reports the registry requests it made: `… 285 HTTP request(s) …`.
REQUESTS_REPORTED = re.compile(r"(\d+) HTTP request")


def requests_reported(output: str) -> int:
    """The request count a command printed (its first, the resolver's summary)."""
    found = REQUESTS_REPORTED.search(output)
    assert found, f"no request count in: {output!r}"
    return int(found.group(1))


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
        modules: tuple[str, ...] = vendor_packages.EXAMPLE_MODULES,
        base: bool = False,
    ) -> Path:
        """A versions file for the local upstream; images start from scratch unless `base`
        (the upstream's minimal Debian) is asked for."""
        u = self.upstream
        entries = "".join(
            f'\n[[kernels]]\nrelease = "{k}"\ndrivers = ["{DRIVER}"]\n' for k in kernels
        )
        path.write_text(
            f'[library]\nrepository = "{u.registry}/{repository}"\n'
            f'source = "https://example.invalid/src"\ninsecure_registries = ["{u.registry}"]\n'
            + (f'[base]\nimage = "{u.base_image}"\n' if base else "")
            + f'[toolkit]\nimage = "{u.registry}/upstream/driver-toolkit:{{kernel_tag}}"\n'
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


def run(
    project: Project,
    versions: Path,
    jobs: int = 1,
    dry_run: bool = False,
    compile_cache: bool = True,
    force: bool = False,
    load_test: bool = True,
) -> tuple[int, str, list[dict[str, Any]]]:
    """Run the build as `invoke build-all` does; returns exit code, console text, results."""
    out = io.StringIO()
    cfg = versions_file.load(versions)
    options = BuildOptions(
        jobs=jobs, dry_run=dry_run, compile_cache=compile_cache, force=force, load_test=load_test
    )
    run = commands.run_build(project, cfg, cfg.targets, Console(file=out, width=250), options)
    results = run.results
    code = run.exit_code
    return code, out.getvalue(), [asdict(r) for r in results]


def route_through(source: Path, target: Path, key: str, registry: str, proxy: str) -> Path:
    """A copy of a versions file whose `key` (repository, or an image template) names the
    proxy instead of the registry behind it; the proxy is an insecure registry too."""
    text = source.read_text().replace(f'{key} = "{registry}/', f'{key} = "{proxy}/')
    target.write_text(
        text.replace("insecure_registries = [", f'insecure_registries = ["{proxy}", ')
    )
    return target


@pytest.fixture(scope="session", autouse=True)
def session_compile_cache() -> Iterator[Path]:
    """The checkout's own compile cache, named through HABANA_COMPILE_CACHE_DIR (the tool's own
    way), as the tests share .cache/upstream: each distinct pair is compiled once, by whichever
    test (or `invoke example`) builds it first, and a second run compiles nothing that did not
    change. Entries are keyed by content, so sharing cannot serve a wrong one. Tests that must
    compile say so (--no-compile-cache); verify-rebuild never reads it."""
    path = ROOT / ".cache" / "compile"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(COMPILE_CACHE_VARIABLE, str(path))
        yield path


@pytest.fixture(autouse=True)
def shared_compile_cache(
    own_environment: None, session_compile_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's compile cache again, after the suite cleared the tool's variables."""
    monkeypatch.setenv(COMPILE_CACHE_VARIABLE, str(session_compile_cache))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The recipe with a cache of the module's own."""
    return Project(ROOT, cache_dir=tmp_path_factory.mktemp("cache"))


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


@pytest.fixture(scope="session")
def built_library(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example pair built, load-tested and pushed once per session; tests never use its
    repository directly (see `library`)."""
    project = Project(ROOT, cache_dir=tmp_path_factory.mktemp("cache"))
    versions = test_upstream.versions(tmp_path_factory.mktemp("v") / "versions.toml")
    cfg = versions_file.load(versions)
    options = BuildOptions(jobs=2)  # two guests at once: one core each
    run = commands.run_build(project, cfg, cfg.targets, Console(file=io.StringIO()), options)
    assert all(r.ok and r.load_tested for r in run.results), run.results
    return versions


def copy_library(test_upstream: UpstreamFixture, versions: Path, repository: str, to: Path) -> Path:
    """The library's images copied, digests kept, into a repository of the caller's own (in
    the same registry); returns a versions file naming it. What one test adds to or removes
    from its copy is seen by no other test, whatever their order."""
    cfg = versions_file.load(versions)
    registry = test_upstream.upstream.registry
    for target in cfg.targets:
        test_upstream.runner.run(
            [
                "skopeo", "copy", "--quiet", "--preserve-digests",
                "--src-tls-verify=false", "--dest-tls-verify=false",
                f"docker://{target.image}", f"docker://{registry}/{repository}:{target.tag}",
            ]
        )  # fmt: skip
        # Local storage too (its layers are there already), as a build would have left it.
        test_upstream.runner.run(
            [
                "podman",
                "pull",
                "--quiet",
                "--tls-verify=false",
                f"{registry}/{repository}:{target.tag}",
            ]
        )
    to.write_text(versions.read_text().replace(cfg.repository, f"{registry}/{repository}"))
    return to


@pytest.fixture(scope="module")
def library(
    built_library: Path,
    test_upstream: UpstreamFixture,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Project, Path]]:
    """The example library in a repository of this test module's own, copied from the one
    build of the session (up to date, load-tested)."""
    require_tools("skopeo")
    name = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    project = Project(ROOT, cache_dir=tmp_path_factory.mktemp("cache"))
    versions = copy_library(
        test_upstream, built_library, f"library/{name}", tmp_path_factory.mktemp("v") / "v.toml"
    )
    yield project, versions
