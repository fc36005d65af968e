from __future__ import annotations

from pathlib import Path

import pytest

from habana_tasks.core.errors import BuildStepError, HostCommandError
from habana_tasks.engine.podman import (
    BuildSpec,
    Podman,
    export_argv,
    pull_argv,
    push_argv,
    shared_network_notice,
)
from tests.fake_runner import FakeRunner

STEP_2 = 'Error: building at STEP "RUN make": while running runtime: exit status 2'


def test_build_argv_is_complete_and_ordered() -> None:
    spec = BuildSpec(
        context=Path("/w/ctx"),
        containerfile=Path("/w/ctx/Dockerfile"),
        iidfile=Path("/w/iid"),
        build_args={"KERNEL_RELEASE": "6.1.0-56-amd64", "BASE_IMAGE": "r/b@sha256:1"},
        labels={"b": "2", "a": "1 with spaces"},
    )
    assert spec.argv == [
        "podman",
        "build",
        "--pull=never",
        "--layers",
        "--file",
        "/w/ctx/Dockerfile",
        "--iidfile",
        "/w/iid",
        "--network",
        "none",
        "--build-arg",
        "BASE_IMAGE=r/b@sha256:1",
        "--build-arg",
        "KERNEL_RELEASE=6.1.0-56-amd64",
        "--label",
        "a=1 with spaces",
        "--label",
        "b=2",
        "/w/ctx",
    ]


def test_forced_build_bypasses_the_layer_cache_and_keeps_no_layers() -> None:
    spec = BuildSpec(Path("/c"), Path("/c/Dockerfile"), Path("/i"), no_cache=True)
    assert spec.argv[3] == "--layers=false"
    assert spec.argv[6:11] == ["--iidfile", "/i", "--network", "none", "--no-cache"]


def test_a_reproducible_build_fixes_its_timestamp_and_annotates_its_manifest() -> None:
    spec = BuildSpec(
        Path("/c"),
        Path("/c/Dockerfile"),
        Path("/i"),
        labels={"k": "v"},
        annotations={"k": "v", "a": "b"},
        timestamp=0,
        target="tools",
    )
    argv = spec.argv
    assert argv[argv.index("--timestamp") + 1] == "0"
    assert argv[argv.index("--target") + 1] == "tools"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--annotation"] == ["a=b", "k=v"]
    assert argv[argv.index("--network") + 1] == "none"
    assert "--timestamp" not in BuildSpec(Path("/c"), Path("/c/D"), Path("/i")).argv


def test_push_records_the_digest_and_pushes_by_image_id() -> None:
    assert push_argv("abc123", "r.example/lib:1-k", Path("/w/d")) == [
        "podman",
        "push",
        "--quiet",
        "--digestfile",
        "/w/d",
        "abc123",
        "docker://r.example/lib:1-k",
    ]
    assert "--tls-verify=false" in push_argv("abc", "127.0.0.1:5/x:1", Path("/d"), False)


def test_pull_and_export() -> None:
    assert pull_argv("r/b@sha256:1") == ["podman", "pull", "--quiet", "r/b@sha256:1"]
    assert pull_argv("r/b@sha256:1", False)[3] == "--tls-verify=false"
    assert export_argv("c1", Path("/w/root.tar")) == [
        "podman",
        "export",
        "--output",
        "/w/root.tar",
        "c1",
    ]


def test_a_transient_runtime_failure_is_built_again_once_and_nothing_else_is(
    tmp_path: Path,
) -> None:
    busy = ["Close_Fd sealing memfd copy: Device or resource busy", "Error: building at STEP"]
    outcomes = [(1, busy), None]

    def answer(argv: list[str]) -> tuple[int, list[str]] | None:
        if argv[:2] != ["podman", "build"]:
            return None
        outcome = outcomes.pop(0)
        if outcome is None:
            spec.iidfile.write_text("sha256:abc\n")
        return outcome

    spec = BuildSpec(
        tmp_path, tmp_path / "Dockerfile", tmp_path / "iid", isolation="chroot", network="host"
    )
    said: list[str] = []
    runner = FakeRunner(answer)
    assert Podman(runner).build(spec, said.append) == "sha256:abc"
    assert len(runner.commands("podman", "build")) == 2
    assert any("building again once" in line for line in said)

    # The build's own failure (and a second runtime failure) is reported, not retried.
    outcomes[:] = [(2, ["x.c:1:1: error: unknown type name", "make: *** [all] Error 2", STEP_2])]
    with pytest.raises(BuildStepError, match=r"exited with 2: x\.c:1:1: error: unknown type"):
        Podman(FakeRunner(answer)).build(spec)
    outcomes[:] = [(1, busy), (1, busy)]
    again = FakeRunner(answer)
    with pytest.raises(HostCommandError, match="sealing memfd copy"):
        Podman(again).build(spec)
    assert len(again.commands("podman", "build")) == 2


def chroot_built_twice(
    tmp_path: Path, namespace: tuple[int, list[str]]
) -> tuple[FakeRunner, list[str]]:
    """Two chroot builds through one Podman; `namespace` is how the try of an empty network
    namespace ends. Returns every command run and what the run said."""
    spec = BuildSpec(tmp_path, tmp_path / "Dockerfile", tmp_path / "iid", isolation="chroot")

    def answer(argv: list[str]) -> tuple[int, list[str]] | None:
        if argv[-1] == "true":
            return namespace
        spec.iidfile.write_text("sha256:abc\n")
        return 0, []

    runner = FakeRunner(answer)
    said: list[str] = []
    podman = Podman(runner)
    podman.build(spec, said.append)
    podman.build(spec, said.append)
    return runner, said


@pytest.mark.parametrize(
    ("euid", "prefix"),
    [(0, ["unshare", "--net", "--"]), (1000, ["podman", "unshare", "unshare", "--net", "--"])],
)
def test_chroot_builds_run_in_an_empty_network_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, prefix: list[str]
) -> None:
    """podman refuses --network none with chroot isolation, so podman itself runs in an empty
    network namespace: as root with unshare, as an ordinary user inside podman's own user
    namespace. The namespace is tried once per run, before the first build."""
    monkeypatch.setattr("os.geteuid", lambda: euid)
    runner, said = chroot_built_twice(tmp_path, (0, []))
    assert runner.calls[0] == [*prefix, "true"]
    builds = runner.commands(*prefix, "podman", "build")
    assert len(builds) == 2 and len(runner.calls) == 3
    assert "--network" not in builds[0] and said == []


def test_chroot_builds_that_cannot_be_cut_off_say_so_once_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no empty network namespace can be made, the run says so once, naming what failed,
    before the first build; the builds then share the host's network instead of failing."""
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    refused = (1, ["unshare: unshare failed: Operation not permitted"])
    runner, said = chroot_built_twice(tmp_path, refused)
    assert said == [
        shared_network_notice(
            "podman unshare unshare --net --: unshare: unshare failed: Operation not permitted"
        )
    ]
    builds = runner.commands("podman", "build")
    assert len(builds) == 2
    assert builds[0][builds[0].index("--network") + 1] == "host"


def test_a_full_disk_is_the_hosts_fault_in_any_podman_command(tmp_path: Path) -> None:
    """Not only the build: an export or a push that meets a full disk names the host."""
    full = "Error: write /var/tmp/x: no space left on device"

    def answer(argv: list[str]) -> tuple[int, list[str]] | None:
        return (125, [full]) if argv[1] in ("export", "push") else None

    podman = Podman(FakeRunner(answer))
    with pytest.raises(HostCommandError, match=f"^the host's storage failed: {full}$"):
        podman.export_rootfs("img", tmp_path / "rootfs.tar")
    with pytest.raises(HostCommandError, match="storage failed"):
        podman.push("img", "r/x:1", tmp_path / "digest", tls_verify=True)
