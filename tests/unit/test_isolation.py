"""Build isolation: the user's choice wins, the probe's answer is remembered per host and
announced once; the real probe runs in tests/integration/test_isolation.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from habana_tasks.cli import commands
from habana_tasks.config.project import Project
from habana_tasks.core.errors import UsageError
from habana_tasks.core.http_client import HTTPClient
from habana_tasks.engine.isolation import BuildIsolation, explicit_choice
from habana_tasks.engine.podman import BuildSpec, Podman
from tests.conftest import ROOT
from tests.fake_runner import FakeRunner, without_empty_network

CRUN = (
    "error running container: from /usr/bin/crun creating container for [/usr/bin/true]: "
    "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
)


def host_without_runtime(argv: list[str]) -> tuple[int, list[str]] | None:
    argv = without_empty_network(argv)
    if argv[:2] == ["podman", "--version"]:
        return 0, ["podman version 4.3.1"]
    if argv[:2] == ["podman", "build"] and "--no-cache" in argv and "--quiet" in argv:
        return 1, [CRUN, ": exit status 1", 'Error: building at STEP "RUN /usr/bin/true"']
    if argv[:2] == ["podman", "build"]:
        Path(argv[argv.index("--iidfile") + 1]).write_text("sha256:built\n")
    return None


def test_the_users_choice_wins_and_is_never_probed(tmp_path: Path) -> None:
    runner = FakeRunner(host_without_runtime)
    chosen = BuildIsolation(
        runner, state_file=tmp_path / "s.json", env={"BUILDAH_ISOLATION": "oci"}
    ).choose()
    # podman reads BUILDAH_ISOLATION itself; the flag says the same, and no probe overrides it.
    assert (chosen.flag, chosen.source) == ("oci", "BUILDAH_ISOLATION")
    ours = BuildIsolation(runner, state_file=tmp_path / "s.json", env={"HABANA_ISOLATION": "oci"})
    assert ours.choose().flag == "oci"
    assert runner.calls == []


@pytest.mark.parametrize("name", ["BUILDAH_ISOLATION", "HABANA_ISOLATION"])
def test_an_unknown_isolation_is_refused_by_name(name: str) -> None:
    with pytest.raises(UsageError, match=rf"{name}='chroott': expected one of oci, chroot"):
        explicit_choice({name: "chroott"})


def test_fallback_is_announced_once_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    runner = FakeRunner(host_without_runtime)
    said: list[str] = []
    state = tmp_path / "state.json"
    podman = Podman(runner, BuildIsolation(runner, announce=said.append, state_file=state, env={}))
    for name in ("a", "b"):
        spec = BuildSpec(tmp_path, tmp_path / "Dockerfile", tmp_path / f"{name}.iid")
        assert podman.build(spec) == "sha256:built"
    builds = [c for c in runner.calls if "--file" in c]
    assert all(c[c.index("--isolation") + 1] == "chroot" for c in builds) and len(builds) == 2
    # chroot isolation takes no --network none: the build runs in an empty namespace instead.
    assert all(c[:5] == ["unshare", "--net", "--", "podman", "build"] for c in builds)
    assert said == [
        "podman cannot run containers here (cgroups in hybrid mode not supported, drop all "
        "controllers from cgroupv2); building with --isolation chroot"
    ]
    # A second run on the same host takes the remembered answer: no probe build this time.
    again = FakeRunner(host_without_runtime)
    chosen = BuildIsolation(again, state_file=state, env={}).choose()
    assert (chosen.flag, chosen.source) == ("chroot", "cached probe")
    assert again.commands("podman", "build") == []


def test_another_podman_version_probes_again(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    BuildIsolation(FakeRunner(host_without_runtime), state_file=state, env={}).choose()

    def upgraded(argv: list[str]) -> tuple[int, list[str]] | None:
        if argv[:2] == ["podman", "--version"]:
            return 0, ["podman version 5.0.0"]
        return None  # this podman runs containers

    runner = FakeRunner(upgraded)
    chosen = BuildIsolation(runner, state_file=state, env={}).choose()
    assert (chosen.flag, chosen.source) == (None, "probe")
    assert chosen.notice is None


def test_a_mistyped_isolation_stops_a_build_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HABANA_ISOLATION", "chroots")
    versions = tmp_path / "versions.toml"
    versions.write_text((ROOT / "versions.toml").read_text())
    sent: list[str] = []
    monkeypatch.setattr(HTTPClient, "send", lambda self, method, url, **kw: sent.append(url))
    with pytest.raises(UsageError) as info:
        commands.build(
            Project(ROOT, tmp_path / "cache"),
            str(versions),
            console=Console(file=io.StringIO()),
        )
    assert info.value.exit_code == 2 and sent == []
