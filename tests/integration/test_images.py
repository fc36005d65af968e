"""What the library's images are, with real podman and the real registry: minimal, held to
their flavour, and reproducible (verify-rebuild). That no build reaches a network, whatever the
isolation: test_build_network.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from habana_tasks.build import labels
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.flavours import KMM1, MINIMAL
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.archive import relative_name
from habana_tasks.core.errors import CommandError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import BuildSpec, Podman
from habana_tasks.registry.client import RegistryClient
from habana_tasks.verification.image_tools import flavour_problems
from tests.conftest import ROOT
from tests.integration.conftest import KERNELS, UpstreamFixture, copy_library

pytestmark = pytest.mark.integration
NEW = KERNELS[1]


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=250), out


def exported(image: str, to: Path) -> Path:
    Podman(ProcessRunner()).export_rootfs(image, to)
    return to


def test_the_example_images_hold_the_driver_and_the_minimal_tools_only(
    library: tuple[Project, Path], tmp_path: Path
) -> None:
    _, versions = library
    for target in versions_file.load(versions).targets:
        rootfs = exported(target.image, tmp_path / f"{target.kernel}.tar")
        with tarfile.open(rootfs) as tar:
            assert flavour_problems(tar, "minimal", has_base=False) == []
            names = {relative_name(m.name) for m in tar.getmembers() if not m.isdir()}
        outside = {n for n in names if not n.startswith("opt/")}
        assert {f"usr/bin/{tool}" for tool in MINIMAL.tools} <= outside
        assert not {n for n in outside if "apt" in n or "dpkg" in n or "rpm" in n}
        assert f"opt/lib/modules/{target.kernel}/extra/habanalabs.ko" in names


def test_verify_rebuild_reproduces_each_published_image(library: tuple[Project, Path]) -> None:
    project, versions = library
    out, text = console()
    code = commands.verify_rebuild(project, str(versions), NEW, console=out)
    assert code == errors.OK, text.getvalue()
    assert "reproduced" in text.getvalue()
    # Proven from a fresh compile: the compile cache is not read.
    runs = sorted((project.cache / "logs").glob("verify-rebuild-*"))
    log = next(runs[-1].glob("*.log")).read_text()
    assert "compile cache: not used (compiled afresh)" in log and 'RUN make -j"$(nproc)"' in log


def test_verify_rebuild_through_a_mirror_reproduces_the_published_digest(
    library: tuple[Project, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """As a disconnected user would: the toolkit copied to a mirror path (same digest), the
    versions file pointing there. The image's bytes say nothing of where an input was pulled
    from: the plan finds it up to date and the rebuild gives the published digest."""
    project, versions = library
    target = next(t for t in versions_file.load(versions).targets if t.kernel == NEW)
    mirrored = target.toolkit_image.replace("/upstream/", "/mirror/")
    assert mirrored != target.toolkit_image
    test_upstream.runner.run(
        [
            "skopeo", "copy", "--quiet", "--all", "--preserve-digests",
            "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{target.toolkit_image}", f"docker://{mirrored}",
        ]
    )  # fmt: skip
    through = tmp_path / "versions.toml"
    through.write_text(
        versions.read_text().replace("/upstream/driver-toolkit", "/mirror/driver-toolkit")
    )
    assert through.read_text() != versions.read_text()
    out, text = console()
    planned = commands.build(
        project, str(through), NEW, options=BuildOptions(dry_run=True), console=out
    )
    assert planned == errors.OK
    assert "up to date" in text.getvalue(), text.getvalue()
    out, text = console()
    code = commands.verify_rebuild(project, str(through), NEW, console=out)
    assert code == errors.OK and "reproduced" in text.getvalue(), text.getvalue()
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert not [v for v in remote.labels.values() if "/upstream/" in v or "/mirror/" in v]


def test_verify_rebuild_names_the_layer_and_the_files_that_differ(
    library: tuple[Project, Path], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """The published tag moved onto an image with one file more: same labels, other content
    (in a copy of the library of this test's own)."""
    project, shared = library
    versions = copy_library(test_upstream, shared, "library/images-moved", tmp_path / "v.toml")
    target = next(t for t in versions_file.load(versions).targets if t.kernel == NEW)
    (tmp_path / "extra.txt").write_text("not from the recipe\n")
    (tmp_path / "Containerfile").write_text(
        f"FROM {target.image}\nCOPY extra.txt /opt/lib/modules/{NEW}/extra/extra.txt\n"
    )
    test_upstream.build_and_push(tmp_path, target.image)
    registry = RegistryClient([test_upstream.upstream.registry])
    layers = registry.get_manifest(ImageReference.parse(target.image)).json()["layers"]
    out, text = console()
    code = commands.verify_rebuild(project, str(versions), NEW, console=out)
    shown = text.getvalue()
    assert code == errors.TARGET_FAILED, shown
    # The layer the Containerfile added, after the image's own (counted from 0).
    assert "DIFFERS" in shown and f"layer {len(layers) - 1}" in shown, shown
    assert f"/opt/lib/modules/{NEW}/extra/extra.txt: only in the published image" in shown, shown


def test_a_kmm1_image_carries_kmod_and_a_base_must_bring_the_flavours_tools(
    test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """kmm1 from scratch: modprobe, depmod and sleep copied from the toolkit, load-tested. The
    same flavour on the upstream's minimal Debian (no kmod installed) is refused by name:
    nothing is installed into a base."""
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    found = {}
    for name, base in (("kmm1", False), ("kmm1-on-debian", True)):
        versions = test_upstream.versions(
            tmp_path / f"{name}.toml",
            kernels=(NEW,),
            repository=f"library/{name}",
            extra='[image]\nflavour = "kmm1"\n',
            base=base,
        )
        out, text = console()
        found[name] = (commands.build(project, str(versions), console=out), text.getvalue())
    code, shown = found["kmm1"]
    assert code == errors.OK, shown
    cfg = versions_file.load(tmp_path / "kmm1.toml")
    with tarfile.open(exported(cfg.targets[0].image, tmp_path / "kmm1.tar")) as tar:
        assert flavour_problems(tar, "kmm1", has_base=False) == []
        names = {relative_name(m.name) for m in tar.getmembers()}
    assert {f"usr/bin/{tool}" for tool in KMM1.tools} <= names
    remote = RegistryClient(cfg.insecure_registries).inspect(cfg.targets[0].image)
    assert remote.labels[labels.PREFIX + "image.flavour"] == "kmm1"
    code, shown = found["kmm1-on-debian"]
    assert code == errors.TARGET_FAILED, shown
    assert "modprobe: absent from the image's PATH (the base image); flavour kmm1 needs it" in (
        shown.replace("\n", " ")
    ), shown


def test_the_manifest_carries_the_labels_as_annotations(library: tuple[Project, Path]) -> None:
    _, versions = library
    cfg = versions_file.load(versions)
    registry = RegistryClient(cfg.insecure_registries)
    for target in cfg.targets:
        manifest = registry.get_manifest(ImageReference.parse(target.image))
        annotations = manifest.json()["annotations"]
        config_labels = registry.inspect(target.image).labels
        ours = {k: v for k, v in config_labels.items() if not k.startswith("io.buildah")}
        assert ours.items() <= annotations.items()
        # Deciding "is it current" needs the manifest only.
        before = registry.requests_sent
        assert registry.inspect(target.image, labels.FINGERPRINT).labels == annotations
        assert registry.requests_sent - before == 1


def test_the_tools_stage_names_a_tool_the_toolkit_lacks(
    test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """The image gets its tools from the toolkit or not at all: nothing is installed."""
    (tmp_path / "Dockerfile").write_bytes((ROOT / "Dockerfile").read_bytes())
    toolkit = f"{test_upstream.upstream.registry}/upstream/driver-toolkit:{NEW}"
    podman = Podman(ProcessRunner())
    podman.ensure(toolkit, tls_verify=False)

    def spec(tools: str) -> BuildSpec:
        return BuildSpec(
            tmp_path,
            tmp_path / "Dockerfile",
            tmp_path / "iid",
            build_args={"TOOLKIT_IMAGE": toolkit, "IMAGE_TOOLS": tools},
            target="tools",
            no_cache=True,  # as the pipeline builds: the step runs and says what it copied
        )

    # The control: a tool the toolkit has is copied, named with the package it came from.
    said: list[str] = []
    podman.build(spec("cp"), said.append)
    copied = [line.split()[1:3] for line in said if line.startswith("TOOL-FILE ")]
    assert ["/usr/bin/cp", "coreutils"] in copied, said
    with pytest.raises(CommandError) as refused:
        podman.build(spec("cp no-such-tool"))
    assert "error: the toolkit image has no no-such-tool to copy into the image" in " ".join(
        refused.value.tail
    )
