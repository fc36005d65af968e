from __future__ import annotations

from pathlib import Path

import pytest

from habana_tasks.core.errors import CommandError
from habana_tasks.engine.podman import BuildSpec, Podman, export_argv, pull_argv, push_argv
from tests.fake_runner import FakeRunner


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


def test_forced_build_bypasses_the_layer_cache() -> None:
    spec = BuildSpec(Path("/c"), Path("/c/Dockerfile"), Path("/i"), no_cache=True)
    assert spec.argv[6:9] == ["--iidfile", "/i", "--no-cache"]


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

    spec = BuildSpec(tmp_path, tmp_path / "Dockerfile", tmp_path / "iid", isolation="chroot")
    said: list[str] = []
    runner = FakeRunner(answer)
    assert Podman(runner).build(spec, said.append) == "sha256:abc"
    assert len(runner.commands("podman", "build")) == 2
    assert any("building again once" in line for line in said)

    # The build's own failure (and a second runtime failure) is reported, not retried.
    outcomes[:] = [(2, ["make: *** [all] Error 2"])]
    with pytest.raises(CommandError, match="Error 2"):
        Podman(FakeRunner(answer)).build(spec)
    outcomes[:] = [(1, busy), (1, busy)]
    again = FakeRunner(answer)
    with pytest.raises(CommandError, match="sealing memfd copy"):
        Podman(again).build(spec)
    assert len(again.commands("podman", "build")) == 2
