"""status, discover, matrix, kmm-module and prune against the real registry, with small release
and toolkit images built here in the shape OpenShift publishes them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from devtools.vendor_packages import EXAMPLE_MODULES
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands, maintenance_commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.engine.podman import Podman
from habana_tasks.maintenance import preflight
from habana_tasks.registry.client import Existence, RegistryClient
from tests.integration.conftest import (
    DRIVER,
    KERNELS,
    UpstreamFixture,
    copy_library,
    requests_reported,
)
from tests.kmm_schema import kmm_load_sequence, schema_errors

pytestmark = pytest.mark.integration
KERNEL_A = "5.14.0-284.25.1.el9_2.x86_64"
KERNEL_B = "5.14.0-284.30.1.el9_2"  # as some toolkits write it: no arch suffix


def out() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=300), buffer


def build_and_push(
    test_upstream: UpstreamFixture, context: Path, files: dict[str, str], ref: str
) -> str:
    context.mkdir(parents=True, exist_ok=True)
    lines = ["FROM scratch"]
    for i, (target, content) in enumerate(files.items()):
        (context / f"f{i}").write_text(content)
        lines.append(f"COPY f{i} {target}")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    runner = test_upstream.runner
    runner.run(["podman", "build", "--tag", ref, str(context)])
    digestfile = context / "digest"
    runner.run(["podman", "push", "--tls-verify=false", "--digestfile", str(digestfile), ref])
    return digestfile.read_text().strip()


@pytest.fixture(scope="module")
def releases(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> str:
    reg = test_upstream.upstream.registry
    work = tmp_path_factory.mktemp("releases")
    toolkits = {}
    for name, kernel in (("a", KERNEL_A), ("b", KERNEL_B)):
        release_json = json.dumps(
            {"KERNEL_VERSION": kernel, "RT_KERNEL_VERSION": kernel + ".rt", "RHEL_VERSION": "9.2"}
        )
        ref = f"{reg}/ocp/driver-toolkit:{name}"
        files = {
            "/usr/share/dtk/README": f"toolkit {name}\n",
            "/etc/driver-toolkit-release.json": release_json,  # the last layer, as in OpenShift
        }
        digest = build_and_push(test_upstream, work / f"dtk-{name}", files, ref)
        toolkits[name] = f"{reg}/ocp/driver-toolkit@{digest}"

    def stream(toolkit: str | None) -> str:
        tags = [
            {
                "name": "machine-os-content",
                "from": {"kind": "DockerImage", "name": "x@sha256:" + "0" * 64},
            }
        ]
        if toolkit:
            tags.append(
                {"name": "driver-toolkit", "from": {"kind": "DockerImage", "name": toolkit}}
            )
        return json.dumps(
            {"kind": "ImageStream", "apiVersion": "image.openshift.io/v1", "spec": {"tags": tags}}
        )

    for version, toolkit in (("4.14.1", "a"), ("4.14.2", "a"), ("4.14.3", "b"), ("4.14.4", None)):
        build_and_push(
            test_upstream,
            work / version,
            {"/release-manifests/image-references": stream(toolkits.get(toolkit or ""))},
            f"{reg}/ocp/release:{version}-x86_64",
        )
    return f"{reg}/ocp/release"


def test_status_shows_the_library(library: tuple[Project, Path]) -> None:
    project, versions = library
    console, buffer = out()
    assert (
        commands.status_command(project, str(versions), output_format="json", console=console) == 0
    )
    data = json.loads(buffer.getvalue())
    assert [(t["kernel"], t["state"]) for t in data["targets"]] == [(k, "current") for k in KERNELS]
    assert all(t["digest"].startswith("sha256:") and t["size"] > 0 for t in data["targets"])


def test_discover_adds_missing_kernels_keeping_comments(
    library: tuple[Project, Path], releases: str, tmp_path: Path
) -> None:
    project, versions = library
    edited = tmp_path / "versions.toml"
    original = "# Our GPU fleet: keep this comment.\n" + versions.read_text()
    edited.write_text(original)
    args: dict[str, Any] = {
        "minors": ["4.14", "4.15"],
        "arches": ["x86_64", "aarch64"],
        "drivers": [DRIVER],
        "release_repository": releases,
    }

    console, buffer = out()
    assert (
        maintenance_commands.discover(project, str(edited), dry_run=True, console=console, **args)
        == 0
    )
    assert edited.read_text() == original  # a dry run writes nothing
    text = buffer.getvalue()
    assert f'+release = "{KERNEL_A}"' in text
    assert "4.14.4 (x86_64): no driver-toolkit in the release payload" in text
    assert "4.15 (x86_64): no release" in text and "4.14 (aarch64): no release" in text

    console, buffer = out()
    assert maintenance_commands.discover(project, str(edited), console=console, **args) == 0
    cfg = versions_file.load(edited)
    assert edited.read_text().startswith("# Our GPU fleet: keep this comment.\n")
    by_kernel = {t.kernel: t for t in cfg.targets}
    assert by_kernel[KERNEL_A].openshift == ("4.14.1", "4.14.2")
    assert by_kernel[KERNEL_B + ".x86_64"].openshift == ("4.14.3",)
    assert KERNEL_A + ".rt" not in by_kernel  # RT kernels only when asked
    assert [t.kernel for t in cfg.targets][:2] == list(KERNELS)  # order kept

    # Run again: nothing new, file unchanged.
    before = edited.read_text()
    assert maintenance_commands.discover(project, str(edited), console=out()[0], **args) == 0
    assert edited.read_text() == before

    # matrix lists exactly the pending pairs: the two new kernels, not the built ones, one
    # job each (or one job for both, with --max-jobs 1).
    jobs = json.loads(commands.matrix(project, str(edited)))["include"]
    assert sorted(j["kernels"] for j in jobs) == sorted([KERNEL_A, KERNEL_B + ".x86_64"])
    assert all(j["pairs"] == 1 and j["only"].startswith(f"{DRIVER}-") for j in jobs)
    one = json.loads(commands.matrix(project, str(edited), max_jobs=1))["include"]
    assert [sorted(one[0]["only"].split(","))] == [sorted(j["only"] for j in jobs)]

    console, buffer = out()
    commands.status_command(project, str(edited), output_format="markdown", console=console)
    catalogue = buffer.getvalue()
    assert f"| `{KERNEL_A}` | {DRIVER} | _missing_ | 4.14.1, 4.14.2 |" in catalogue
    assert f"| `{KERNELS[0]}` | {DRIVER} | `" in catalogue and "@sha256:" in catalogue


def test_kmm_module_maps_every_built_kernel_to_an_existing_image(
    library: tuple[Project, Path], test_upstream: UpstreamFixture
) -> None:
    project, versions = library
    module = yaml.safe_load(maintenance_commands.kmm_module(project, DRIVER, str(versions)))
    assert module["apiVersion"] == "kmm.sigs.x-k8s.io/v1beta1" and module["kind"] == "Module"
    assert schema_errors(module) == []
    container = module["spec"]["moduleLoader"]["container"]
    # Upmost first (KMM loads the list from last to first): the declared order, as tested.
    assert container["modprobe"] == {
        "moduleName": EXAMPLE_MODULES[-1],
        "modulesLoadingOrder": list(reversed(EXAMPLE_MODULES)),
        "dirName": "/opt",
    }
    assert kmm_load_sequence(container["modprobe"]) == list(EXAMPLE_MODULES)
    mappings = container["kernelMappings"]
    assert [m["literal"] for m in mappings] == list(KERNELS)
    registry = RegistryClient([test_upstream.upstream.registry])
    cfg = versions_file.load(versions)
    images = {t.kernel: t.image for t in cfg.select(driver=DRIVER)}
    for mapping in mappings:
        # Pinned to the digest the tag named when the Module was written (it checked the pair).
        tag = registry.inspect(images[mapping["literal"]])
        assert mapping["containerImage"] == f"{cfg.repository}@{tag.digest}"
        remote = registry.inspect(mapping["containerImage"])
        assert remote.existence is Existence.PRESENT
        assert remote.labels["io.habana-ai-driver.kernel.release"] == mapping["literal"]


def test_prune_removes_only_what_it_listed(
    library: tuple[Project, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    project, shared = library
    # A repository of this test's own: the tags it adds stay out of every other test's way.
    versions = copy_library(test_upstream, shared, "library/prune", tmp_path / "versions.toml")
    cfg = versions_file.load(versions)
    repo = cfg.repository
    runner = test_upstream.runner
    build_and_push(test_upstream, tmp_path / "old", {"/old": "old image\n"}, f"{repo}:0.0.1-old")
    # An unnamed alias of a named image: deleting its digest would delete the named tag too.
    runner.run(["podman", "pull", "--tls-verify=false", cfg.targets[0].image])
    runner.run(["podman", "tag", cfg.targets[0].image, f"{repo}:alias"])
    runner.run(["podman", "push", "--tls-verify=false", f"{repo}:alias"])

    console, buffer = out()
    assert maintenance_commands.prune_command(project, str(versions), console=console) == 0
    listed = buffer.getvalue()
    assert "0.0.1-old" in listed and "would delete" in listed and "alias" not in listed
    registry = RegistryClient([test_upstream.upstream.registry])
    assert registry.inspect(f"{repo}:0.0.1-old").existence is Existence.PRESENT

    console, buffer = out()
    assert (
        maintenance_commands.prune_command(project, str(versions), apply=True, console=console) == 0
    )
    assert "deleted" in buffer.getvalue()
    assert registry.inspect(f"{repo}:0.0.1-old").existence is Existence.ABSENT
    for target in cfg.targets:
        assert registry.inspect(target.image).existence is Existence.PRESENT
    assert registry.inspect(f"{repo}:alias").existence is Existence.PRESENT


@pytest.fixture(scope="module")
def preflight_releases(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Release images as OpenShift publishes them, whose toolkits ship the example's kernels
    (4.90.1: 6.1.0-56, 4.90.3: 6.1.0-55) or one the library lacks (4.90.2)."""
    reg = test_upstream.upstream.registry
    work = tmp_path_factory.mktemp("preflight")
    for version, kernel in (("4.90.1", KERNELS[1]), ("4.90.2", KERNEL_A), ("4.90.3", KERNELS[0])):
        release_json = json.dumps({"KERNEL_VERSION": kernel, "RHEL_VERSION": ""})
        digest = build_and_push(
            test_upstream,
            work / f"dtk-{version}",
            {"/etc/driver-toolkit-release.json": release_json},
            f"{reg}/ocp/driver-toolkit:{version}",
        )
        stream = {
            "kind": "ImageStream",
            "spec": {
                "tags": [
                    {
                        "name": "driver-toolkit",
                        "from": {
                            "kind": "DockerImage",
                            "name": f"{reg}/ocp/driver-toolkit@{digest}",
                        },
                    }
                ]
            },
        }
        build_and_push(
            test_upstream,
            work / version,
            {"/release-manifests/image-references": json.dumps(stream)},
            f"{reg}/ocp/release:{version}-x86_64",
        )
    return f"{reg}/ocp/release"


def preflight_json(project: Project, versions: Path, **args: Any) -> tuple[int, dict[str, Any]]:
    console, buffer = out()
    code = maintenance_commands.preflight_command(
        project, str(versions), output_format="json", console=console, **args
    )
    return code, json.loads(buffer.getvalue())


def test_preflight_a_release_the_library_fully_covers(
    library: tuple[Project, Path], preflight_releases: str
) -> None:
    project, versions = library
    code, found = preflight_json(
        project, versions, openshift=["4.90.1"], release_repository=preflight_releases
    )
    assert code == 0, found
    (one,) = found["answers"]
    assert (one["origin"], one["kernel"], one["driver"]) == (
        "OpenShift 4.90.1 (x86_64)",
        KERNELS[1],
        DRIVER,
    )
    assert (one["present"], one["load_tested"], one["signed"], one["current"]) == (
        True,
        True,
        None,
        True,
    )
    assert found["ok"] is True and found["errors"] == []


def test_preflight_a_release_whose_kernel_is_missing_says_what_to_do(
    library: tuple[Project, Path], preflight_releases: str
) -> None:
    project, versions = library
    code, found = preflight_json(
        project, versions, openshift=["4.90.1", "4.90.2"], release_repository=preflight_releases
    )
    assert code == errors.NOT_READY
    assert [a["ok"] for a in found["answers"]] == [True, False]
    missing = found["answers"][1]
    assert missing["kernel"] == KERNEL_A and missing["present"] is False
    assert missing["detail"] == "kernel not in versions.toml"
    assert missing["action"].startswith("invoke discover --minor 4.90 --arch x86_64")
    console, buffer = out()
    maintenance_commands.preflight_command(
        project,
        str(versions),
        openshift=["4.90.1", "4.90.2"],
        release_repository=preflight_releases,
        output_format="markdown",
        console=console,
    )
    summary = buffer.getvalue()
    assert summary.startswith("# Upgrade preflight: NOT ready")
    assert f"| OpenShift 4.90.2 (x86_64) | `{KERNEL_A}` | {DRIVER} | **no** |" in summary


def test_preflight_an_image_that_was_not_load_tested_is_a_no(
    library: tuple[Project, Path],
    test_upstream: UpstreamFixture,
    preflight_releases: str,
    tmp_path: Path,
) -> None:
    project_cache = library[0]
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (KERNELS[0],), repository="library/preflight-untested"
    )
    cfg = versions_file.load(versions)
    options = BuildOptions(load_test=False)
    run = commands.run_build(project_cache, cfg, cfg.targets, out()[0], options)
    assert run.ok
    code, found = preflight_json(
        project_cache, versions, openshift=["4.90.3"], release_repository=preflight_releases
    )
    assert code == errors.NOT_READY
    (one,) = found["answers"]
    assert (one["present"], one["load_tested"]) == (True, False)
    assert one["action"] == f"invoke build --kernel {KERNELS[0]} --driver {DRIVER}"
    assert "not load-tested" in one["detail"]


def test_preflight_a_node_list_mixing_covered_and_uncovered_kernels(
    library: tuple[Project, Path], tmp_path: Path
) -> None:
    project, versions = library
    nodes = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"metadata": {"name": "gaudi-1"},
             "status": {"nodeInfo": {"kernelVersion": KERNELS[1], "architecture": "amd64"}}},
            {"metadata": {"name": "gaudi-2"},
             "status": {"nodeInfo": {"kernelVersion": KERNEL_A, "architecture": "amd64"}}},
        ],
    }  # fmt: skip
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps(nodes))
    code, found = preflight_json(project, versions, nodes=str(path))
    assert code == errors.NOT_READY
    assert [(a["origin"], a["ok"]) for a in found["answers"]] == [
        ("node gaudi-1", True),
        ("node gaudi-2", False),
    ]
    assert found["answers"][1]["action"].startswith(f'add [[kernels]] release = "{KERNEL_A}"')


def test_preflight_a_release_that_cannot_be_resolved_fails_clearly(
    library: tuple[Project, Path], preflight_releases: str
) -> None:
    project, versions = library
    code, found = preflight_json(
        project, versions, openshift=["4.90.9"], release_repository=preflight_releases
    )
    assert code == errors.UNKNOWN_STATE and found["answers"] == [] and found["ok"] is False
    (error,) = found["errors"]
    assert error.startswith("OpenShift 4.90.9 (x86_64): cannot resolve: 4.90.9 (x86_64): ")


def test_the_page_covers_releases_and_nodes_together_from_status_state(
    library: tuple[Project, Path], preflight_releases: str, tmp_path: Path
) -> None:
    """`invoke site --openshift ... --nodes ...`: both coverages on one page, the releases read
    from [discover] release_repository, every pair answered from what status resolved (the
    requests beyond status's are the releases' own reads)."""
    project, versions = library
    versions.write_text(
        versions.read_text() + f'\n[discover]\nrelease_repository = "{preflight_releases}"\n'
    )
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"items": [
        {"metadata": {"name": "gaudi-1"},
         "status": {"nodeInfo": {"kernelVersion": KERNELS[0], "architecture": "amd64"}}},
    ]}))  # fmt: skip

    def site(output: str, **coverage: Any) -> tuple[int, int, str]:
        """The exit code, the HTTP requests the run counted, and what it printed."""
        console, buffer = out()
        code = maintenance_commands.site_command(
            project, str(versions), output=str(tmp_path / output), console=console, **coverage
        )
        said = buffer.getvalue()
        return code, requests_reported(said), said

    asked = {"openshift": ["4.90.1", "4.90.2"], "nodes": str(nodes)}
    site("site", **asked)  # the blob cache warm, as for the daily run
    code, with_coverage, said = site("site", **asked)
    assert code == errors.NOT_READY, said  # 4.90.2's kernel is not in the library
    page = (tmp_path / "site" / "index.html").read_text()
    row = '<td>{}</td><td>{}</td><td>6.1.0-1</td><td class="{}">{}</td>'
    assert row.format("OpenShift 4.90.1 (x86_64)", KERNELS[1], "current", "covered") in page
    assert row.format("node gaudi-1", KERNELS[0], "current", "covered") in page
    assert "<td>OpenShift 4.90.2 (x86_64)</td><td>" + KERNEL_A in page
    _, plain, _ = site("plain")
    # Beyond status's requests, only the releases' own reads (as many as reading them alone
    # takes): no pair is resolved again.
    registry = RegistryClient(
        versions_file.load(versions).insecure_registries, blob_cache=project.cache / "blobs"
    )
    preflight.release_kernels(registry, preflight_releases, asked["openshift"])
    assert registry.requests_sent > 0
    assert with_coverage - plain == registry.requests_sent, (with_coverage, plain)


def test_kmm_module_with_the_cluster_sign_flow_lists_every_module_file_of_each_image(
    library: tuple[Project, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    project, versions = library
    text = maintenance_commands.kmm_module(
        project, DRIVER, str(versions), sign_key_secret="k", sign_cert_secret="c"
    )
    module = yaml.safe_load(text)
    assert schema_errors(module) == []
    cfg = versions_file.load(versions)
    for mapping, target in zip(
        module["spec"]["moduleLoader"]["container"]["kernelMappings"], cfg.targets, strict=True
    ):
        # KMM pushes the image it signs under the tag; it pulls the unsigned one by digest.
        assert mapping["containerImage"] == f"{cfg.repository}-signed:{target.tag}"
        held = RegistryClient(cfg.insecure_registries).inspect(target.image)
        assert mapping["sign"]["unsignedImage"] == f"{cfg.repository}@{held.digest}"
        rootfs = tmp_path / f"{target.tag}.tar"
        Podman(test_upstream.runner).export_rootfs(target.image, rootfs)
        with tarfile.open(rootfs) as tar:
            in_image = sorted(
                "/" + name
                for name in tar.getnames()
                if name.startswith(f"opt/lib/modules/{target.kernel}/extra/")
                and name.endswith(".ko")
            )
        assert sorted(mapping["sign"]["filesToSign"]) == in_image
