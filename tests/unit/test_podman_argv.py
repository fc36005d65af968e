from __future__ import annotations

from pathlib import Path

from habana_tasks.podman import BuildSpec, export_argv, pull_argv, push_argv


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
