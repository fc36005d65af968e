"""The host's fault is not the pair's: pushing runs against docker-registry in which the host
fails — a podman that refuses the build command (exit 125), a container runtime that cannot
create a container, podman's storage full, the tool's cache full (small tmpfs) — each end with
exit 6, a line that
names the host's fault and says nothing is recorded, no `failed-` tag in the repository, and a
next run that plans to build the pair; once the host is fixed, the next run builds and pushes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from habana_tasks.build import failure_records
from habana_tasks.build.failure_records import NOT_RECORDED
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core import errors
from habana_tasks.registry.client import RegistryClient
from tests.conftest import ROOT, require, require_tools
from tests.integration.conftest import KERNELS, UpstreamFixture, run

pytestmark = pytest.mark.integration

REFUSING_PODMAN = """#!/bin/sh
if [ "$1" = build ]; then
  echo "Error: this podman refuses every build command" >&2
  exit 125
fi
exec {podman} "$@"
"""
BROKEN_RUNTIME = '#!/bin/sh\necho "this runtime cannot create containers" >&2\nexit 1\n'
HEADROOM_MB = 16  # free space left in the storage once the toolkit is in it


@pytest.fixture(scope="module")
def versions(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v") / "versions.toml"
    return test_upstream.versions(path, (KERNELS[0],), repository="library/host-faults")


@pytest.fixture(autouse=True)
def chosen_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OCI runtime, as a user who chose it: the probe would otherwise fall back to chroot
    where the runtime cannot start (and run the refusing podman's build itself)."""
    monkeypatch.setenv("HABANA_ISOLATION", "oci")


def target_of(versions: Path) -> BuildTarget:
    return versions_file.load(versions).targets[0]


def assert_the_hosts_fault(
    versions: Path, test_upstream: UpstreamFixture, outcome: tuple[int, str, list[dict[str, Any]]]
) -> str:
    """Exit 6, the host named, nothing recorded; returns the line the summary gave."""
    code, out, report = outcome
    assert code == errors.HOST_FAILED, out
    (result,) = report
    assert result["status"] == "failed" and result["failure"]["origin"] == errors.HOST
    assert result["detail"].endswith(NOT_RECORDED), result["detail"]
    target = target_of(versions)
    registry = RegistryClient([test_upstream.upstream.registry])
    assert failure_records.read_records(registry, target.repository, [target.tag]) == {}
    tags = registry.list_tags(target.repository)
    assert not any(failure_records.is_record_tag(tag) for tag in tags), tags
    return str(result["detail"])


def assert_the_next_run_builds_it(project: Project, versions: Path) -> None:
    code, out, report = run(project, versions, dry_run=True)
    assert code == errors.OK and (report[0]["action"], report[0]["status"]) == (
        "build",
        "planned",
    ), out


def refusing_podman(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    real = shutil.which("podman")
    assert real is not None
    (tmp_path / "podman").write_text(REFUSING_PODMAN.format(podman=real))
    (tmp_path / "podman").chmod(0o755)
    env.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def broken_runtime(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "broken-runtime"
    runtime.write_text(BROKEN_RUNTIME)
    runtime.chmod(0o755)
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[engine]\nruntime = "broken"\n[engine.runtimes]\nbroken = ["{runtime}"]\n')
    env.setenv("CONTAINERS_CONF", str(conf))


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (
            refusing_podman,
            "podman refused the build command: Error: this podman refuses every build command",
        ),
        (
            broken_runtime,
            "the container runtime could not start a build step: "
            "this runtime cannot create containers",
        ),
    ],
)
def test_podman_or_its_runtime_refusing(
    project: Project,
    versions: Path,
    test_upstream: UpstreamFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[Path, pytest.MonkeyPatch], None],
    said: str,
) -> None:
    with monkeypatch.context() as env:
        fault(tmp_path, env)
        line = assert_the_hosts_fault(versions, test_upstream, run(project, versions))
    assert line.startswith(said), line
    assert_the_next_run_builds_it(project, versions)


@pytest.fixture
def small_storage(tmp_path: Path, test_upstream: UpstreamFixture) -> Iterator[Path]:
    """podman's storage on a tmpfs that holds the pair's toolkit and 16 MB more: a compile
    fills it. (Mounting needs root; the `rootless` session does not run this file.)"""
    require(os.geteuid() == 0, "root, to mount a tmpfs")
    require_tools("mount", "umount")
    store = tmp_path / "storage"
    store.mkdir()
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(store)], check=True)
    try:
        toolkit = test_upstream.upstream.toolkit_image(KERNELS[0])
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
        pull = ["podman", "pull", "--quiet", "--tls-verify=false", toolkit]
        subprocess.run(pull, env=env, check=True, stdout=subprocess.DEVNULL)
        used = shutil.disk_usage(store).used // 2**20
        size = f"size={used + HEADROOM_MB}m"
        subprocess.run(["mount", "-o", f"remount,{size}", str(store)], check=True)
        yield conf
    finally:
        subprocess.run(["umount", "--lazy", str(store)], check=False)


def test_podmans_storage_full(
    project: Project,
    versions: Path,
    test_upstream: UpstreamFixture,
    small_storage: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as env:
        env.setenv("CONTAINERS_STORAGE_CONF", str(small_storage))
        outcome = run(project, versions, compile_cache=False)  # the compile fills it
        line = assert_the_hosts_fault(versions, test_upstream, outcome)
    assert line.startswith("the host's storage failed: "), line
    assert "no space left on device" in line.lower()
    assert_the_next_run_builds_it(project, versions)


def test_a_full_cache(versions: Path, test_upstream: UpstreamFixture, tmp_path: Path) -> None:
    """The tool's own cache (HABANA_CACHE_DIR) on a tmpfs too small for the driver package:
    the download fails for the host's reason, named, exit 6, nothing recorded."""
    require(os.geteuid() == 0, "root, to mount a tmpfs")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache)], check=True)
    try:
        outcome = run(Project(ROOT, cache_dir=cache), versions)
    finally:
        subprocess.run(["umount", "--lazy", str(cache)], check=False)
    line = assert_the_hosts_fault(versions, test_upstream, outcome)
    assert line.startswith("driver package: "), line
    assert line.endswith(f": cannot write into the cache: No space left on device{NOT_RECORDED}")


def test_once_the_host_is_fixed_the_pair_is_built_and_pushed(
    project: Project, versions: Path
) -> None:
    code, out, report = run(project, versions, load_test=False)  # built and pushed: the subject
    assert code == errors.OK, out
    assert (report[0]["action"], report[0]["status"]) == ("build", "ok"), out
