"""The isolation probe against real podman, on any host: a runtime that works (runc), one that
cannot start a container (so the fallback path runs even where podman's default works), and a
real build that succeeds through the fallback."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from devtools import local_upstream
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.isolation import BuildIsolation, probe
from habana_tasks.engine.podman import UNSHARED, USER_UNSHARED, BuildSpec, Podman
from habana_tasks.verification.worker import WorkerTools
from tests.conftest import ROOT, require_tools
from tests.integration.conftest import KERNELS, UpstreamFixture

pytestmark = pytest.mark.integration

BROKEN_RUNTIME = '#!/bin/sh\necho "this runtime cannot start containers" >&2\nexit 1\n'


def containers_conf(tmp_path: Path, runtime: str, path: str) -> Path:
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[engine]\nruntime = "{runtime}"\n[engine.runtimes]\n{runtime} = ["{path}"]\n')
    return conf


def test_a_working_runtime_needs_no_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tools("podman", "runc")
    monkeypatch.setenv("CONTAINERS_CONF", str(containers_conf(tmp_path, "runc", "/usr/sbin/runc")))
    found = probe(ProcessRunner())
    assert (found.flag, found.reason) == (None, "podman runs RUN steps with its default")


def test_a_runtime_that_cannot_start_falls_back_to_chroot_and_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_upstream: UpstreamFixture
) -> None:
    runtime = tmp_path / "broken-runtime"
    runtime.write_text(BROKEN_RUNTIME)
    runtime.chmod(0o755)
    monkeypatch.setenv("CONTAINERS_CONF", str(containers_conf(tmp_path, "broken", str(runtime))))
    runner = test_upstream.runner
    said: list[str] = []
    isolation = BuildIsolation(runner, announce=said.append, state_file=tmp_path / "state.json")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text(
        f"FROM {local_upstream.LOCAL_BASE}\nRUN echo built > /built-here\n"
    )

    def spec(isolation: str | None) -> BuildSpec:
        return BuildSpec(context, context / "Containerfile", tmp_path / "iid", isolation=isolation)

    # On this runtime a RUN step fails with podman's default isolation...
    assert runner.run(spec("oci").argv, check=False).returncode != 0
    # ...the probe says so once, and the same build then succeeds with the fallback.
    image = Podman(runner, isolation).build(spec(None))
    assert said == [
        "podman cannot run containers here (this runtime cannot start containers); "
        "building with --isolation chroot"
    ]
    assert isolation.choose().flag == "chroot" and len(said) == 1
    runner.run(["podman", "rmi", "--force", image])


def test_podmans_own_variable_builds_the_librarys_tools_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_upstream: UpstreamFixture
) -> None:
    """BUILDAH_ISOLATION=chroot, as buildah's and podman's own images and many CI runners set
    it: the library's `--target tools` build (the load test's worker) builds, with no network."""
    monkeypatch.setenv("BUILDAH_ISOLATION", "chroot")
    runner = test_upstream.runner
    podman = Podman(runner, BuildIsolation(runner, state_file=tmp_path / "state.json"))
    # A toolkit of its own (one more file), so that no step comes from podman's layer cache.
    u = test_upstream.upstream
    (tmp_path / "Containerfile").write_text(
        f"FROM {u.toolkit_image(KERNELS[0])}\nRUN echo {uuid.uuid4().hex} > /etc/this-test\n"
    )
    toolkit = f"{u.registry}/upstream/isolation-test-toolkit:{KERNELS[0]}"
    monkeypatch.delenv("BUILDAH_ISOLATION")
    test_upstream.build_and_push(tmp_path, toolkit)
    monkeypatch.setenv("BUILDAH_ISOLATION", "chroot")
    lines: list[str] = []
    tar = WorkerTools(podman, ROOT / "Dockerfile", tmp_path / "kernels").tar(toolkit, lines.append)
    assert tar.is_file() and tar.stat().st_size > 0
    assert not any("Using cache" in line for line in lines), lines
    assert any(line.startswith("STEP") and " RUN " in f" {line}" for line in lines), lines
    assert podman.chroot_network() == (UNSHARED if os.geteuid() == 0 else USER_UNSHARED)
