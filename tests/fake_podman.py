"""FakePodman: podman, kmod, skopeo and qemu as the pipeline drives them, answered from a fake
registry in the test's own process; with the example library's versions file over that registry
and a run of the build service through both fakes. Its real counterparts run in
tests/integration/test_pipeline.py and test_signals.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from pathlib import Path

from rich.console import Console

from habana_tasks.build import service as build_service
from habana_tasks.cli.progress import PlainReporter
from habana_tasks.config import targets, versions_file
from habana_tasks.config.flavours import MINIMAL
from habana_tasks.config.project import Project
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.engine.isolation import BuildIsolation
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.manifests import OCI_MANIFEST
from habana_tasks.verification.console import MARK
from tests.conftest import ROOT
from tests.fake_image import add_tools
from tests.fake_registry import FakeRegistry
from tests.fake_runner import FakeRunner, without_empty_network

KERNELS = ("6.1.0-55-amd64", "6.1.0-56-amd64")
DRIVER = "6.1.0-1"
IB_REGISTER_CRC = 0x1B2C3D4E
# The kernel's files in each fake toolkit (symvers as plain text: read as such when not gzip).
KERNEL_FILES = {
    "modules.dep": "kernel/drivers/infiniband/core/ib_core.ko:\n",
    "modules.builtin": "kernel/lib/crc32c.ko\n",
    "symvers.gz": f"0x{IB_REGISTER_CRC:08x}\tib_register_client\t"
    "drivers/infiniband/core/ib_core\tEXPORT_SYMBOL\t\n",
}


def image_tar(release: str, under: str = "opt") -> bytes:
    """An exported minimal image as the checks expect it: the flavour's tools with their
    libraries, a module and its modules.dep (under compiled/: the compiled stage's image)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if under == "opt":
            add_tools(tar, MINIMAL.tools)
        for name, data in (
            (f"{under}/lib/modules/{release}/extra/habanalabs.ko", b"\x7fELF module"),
            (f"{under}/lib/modules/{release}/modules.dep", b"extra/habanalabs.ko:\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class FakePodman(FakeRunner):
    """podman, modinfo and modprobe as the pipeline calls them; pushes land in the FakeRegistry."""

    def __init__(self, registry: FakeRegistry) -> None:
        super().__init__(self.answer_for)
        self.registry = registry
        self.failing_pulls: set[str] = set()
        self.failing_builds: dict[str, str] = {}  # release -> the line its compile fails with
        # How those builds fail instead, at their first podman build: a failure of the host.
        self.host_failure: tuple[int, list[str]] | None = None
        self.compiles: list[str] = []  # the release of each compile, in order
        self.vermagic: dict[str, str] = {}  # release -> what modinfo says
        self.labels: dict[str, dict[str, str]] = {}  # image id -> labels given to the build
        self.annotations: dict[str, dict[str, str]] = {}  # ... and its annotations
        self.release_of: dict[str, str] = {}  # image id -> kernel release
        self.block_builds = threading.Event()
        self.building = threading.Event()
        self.terminated = threading.Event()
        self.waited_out: list[str] = []  # blocked builds nobody stopped (they gave up at 10 s)
        self.created: dict[str, str] = {}  # container name -> image id
        # What the built module declares (modinfo depends, --dump-modversions) ...
        self.depends = "ib_core"
        self.imports = [f"0x{IB_REGISTER_CRC:08x}\tib_register_client"]
        # ... and what each toolkit's kernel holds: /lib/modules/<release>/modules.dep and
        # Module.symvers, as `podman cp` copies them out of the toolkit image.
        self.kernel_files = {
            f"/lib/modules/{{release}}/{name}": text for name, text in KERNEL_FILES.items()
        }
        self.kernel_files["/boot/vmlinuz-{release}"] = "a kernel"
        # What the guest's console says when qemu boots it.
        self.guest = [f"{MARK} booted {{release}}", f"{MARK} PASS"]

    def terminate_all(self) -> None:
        super().terminate_all()  # as the real runner: stopping is known before any child ends
        self.terminated.set()
        self.block_builds.clear()

    def answer_for(self, argv: list[str]) -> tuple[int, list[str]] | None:
        # As root, chroot builds run in a network namespace of their own (unshare --net).
        argv = without_empty_network(argv)
        command = argv[:2]
        if command == ["podman", "image"] and argv[2] == "exists":
            return 1, []
        if command == ["podman", "pull"]:
            return (
                (125, [f"Error: {argv[-1]}: manifest unknown"])
                if argv[-1] in self.failing_pulls
                else None
            )
        if command == ["podman", "build"]:
            return self.build(argv)
        if command == ["podman", "export"]:
            container = argv[-1]
            image = self.created[container]
            tar = image_tar(self.release_of[image], "compiled" if "compiled" in image else "opt")
            Path(argv[argv.index("--output") + 1]).write_bytes(tar)
        if command == ["podman", "create"]:
            self.created[argv[argv.index("--name") + 1]] = argv[-2]
        if command == ["podman", "push"]:
            return self.push(argv)
        if command == ["skopeo", "copy"]:
            return self.copy_layout(argv)
        if argv[0] == "modinfo":
            release = argv[-1].split("/modules/", 1)[1].split("/", 1)[0]
            vermagic = self.vermagic.get(release, f"{release} SMP preempt mod_unload")
            return 0, [
                f"filename:       {argv[-1]}",
                f"vermagic:       {vermagic}",
                f"depends:        {self.depends}",
            ]
        if argv[:2] == ["modprobe", "-d"]:
            return 0, [f"insmod {argv[2]}/lib/modules/{argv[4]}/extra/habanalabs.ko"]
        if argv[:2] == ["modprobe", "--dump-modversions"]:
            return 0, self.imports
        if argv[0] == "modprobe":  # --show-exports: the module exports nothing
            return 0, []
        if command == ["podman", "cp"]:
            return self.copy_out(argv)
        if argv[0].startswith("qemu-system"):
            release = next(k for k in KERNELS if k in " ".join(argv))
            return 0, [line.format(release=release) for line in self.guest]
        return None

    def copy_out(self, argv: list[str]) -> tuple[int, list[str]]:
        """The toolkit's kernel files, by their path in the image, with the release filled in;
        the worker tools' tar from the tools stage."""
        path = argv[2].split(":", 1)[1]
        if path == "/rootfs.tar":
            with tarfile.open(argv[3], "w") as tar:
                add_tools(tar, ["sh"])
            return 0, []
        release = next(k for k in KERNELS if k in path)
        text = self.kernel_files.get(path.replace(release, "{release}", 1))
        if text is None:
            return 125, [f"Error: {path}: no such file or directory"]
        Path(argv[3]).write_text(text)
        return 0, []

    def build(self, argv: list[str]) -> tuple[int, list[str]]:
        """The three builds of an image (compile-inputs, compiled, the assembly) and the
        worker's tools stage."""
        target = argv[argv.index("--target") + 1] if "--target" in argv else None
        iidfile = Path(argv[argv.index("--iidfile") + 1])
        args = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")
        release = args.get("KERNEL_RELEASE", "")
        if target == "tools":  # the load test's worker
            iidfile.write_text("sha256:worker-tools\n")
            return 0, []
        if target == "compile-inputs":  # what the toolkit gives the compile: its digest here
            if self.host_failure and release in self.failing_builds:
                return self.host_failure
            content = hashlib.sha256(args["TOOLKIT_IMAGE"].encode()).hexdigest()
            iidfile.write_text(f"sha256:inputs-{release}\n")
            return 0, [f"COMPILE-INPUTS {content} 3 files"]
        if target == "compiled":
            self.compiles.append(release)
            self.building.set()
            if self.block_builds.is_set():
                if not self.terminated.wait(10):
                    self.waited_out.append(release)
                return -15, ["make: *** [all] Terminated"]
            if release in self.failing_builds:
                # As podman ends a RUN step whose command failed.
                step = 'Error: building at STEP "RUN make": while running runtime: exit status 1'
                return 1, [self.failing_builds[release], step]
            image_id = f"sha256:compiled-{release}-{len(self.compiles)}"
            self.release_of[image_id] = release
            iidfile.write_text(image_id + "\n")
            return 0, ["STEP 1/1: done"]
        given, annotated = (
            {
                argv[i + 1].split("=", 1)[0]: argv[i + 1].split("=", 1)[1]
                for i, a in enumerate(argv)
                if a == flag
            }
            for flag in ("--label", "--annotation")
        )
        image_id = f"sha256:{release}-{len(self.labels)}"
        self.labels[image_id], self.release_of[image_id] = given, release
        self.annotations[image_id] = annotated
        iidfile.write_text(image_id + "\n")
        return 0, ["STEP 1/1: done"]

    def push(self, argv: list[str]) -> tuple[int, list[str]]:
        """Into an OCI layout (the pipeline's publish), or straight to the FakeRegistry."""
        image_id, destination = argv[-2], argv[-1]
        body = self.registry.image_manifest(
            self.labels[image_id], OCI_MANIFEST, self.annotations[image_id]
        )
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if destination.startswith("oci:"):
            layout = Path(destination.split(":")[1])
            (layout / "blobs" / "sha256").mkdir(parents=True)
            (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(body)
            index = {"manifests": [{"mediaType": OCI_MANIFEST, "digest": digest}]}
            (layout / "index.json").write_text(json.dumps(index))
        else:
            name, tag = destination.removeprefix("docker://").rsplit(":", 1)
            self.registry.manifests[f"{name.split('/', 1)[1]}:{tag}"] = (OCI_MANIFEST, body)
        Path(argv[argv.index("--digestfile") + 1]).write_text(digest)
        return 0, []

    def copy_layout(self, argv: list[str]) -> tuple[int, list[str]]:
        """skopeo copy oci:<layout>:image docker://<host>/<repo>@<digest>: by digest, no tag."""
        layout = Path(argv[-2].split(":")[1])
        name, digest = argv[-1].removeprefix("docker://").split("@")
        body = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
        self.registry.manifests[f"{name.split('/', 1)[1]}:{digest}"] = (OCI_MANIFEST, body)
        return 0, []


def library(fake: FakeRegistry, tmp_path: Path, extra: str = "") -> targets.Config:
    host = fake.host
    fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    for kernel in KERNELS:  # one toolkit per kernel, each with its own digest
        fake.add_image("dtk", kernel, {"kernel": kernel}, OCI_MANIFEST)
    package = tmp_path / "habanalabs.rpm"
    package.write_bytes(b"rpm")
    entries = "".join(f'[[kernels]]\nrelease = "{k}"\ndrivers = ["{DRIVER}"]\n' for k in KERNELS)
    path = tmp_path / "versions.toml"
    path.write_text(
        f'[library]\nrepository = "{host}/library/driver"\ninsecure_registries = ["{host}"]\n'
        f'[base]\nimage = "{host}/base/debian:12"\n[toolkit]\nimage = "{host}/dtk:{{kernel}}"\n'
        f'[driver]\npackage_url = "{package.as_uri()}"\n{extra}{entries}'
    )
    return versions_file.load(path)


def run(
    runner: FakePodman,
    cfg: targets.Config,
    tmp_path: Path,
    *,
    push: bool = True,
    load_test: bool = False,
    retry_failed: bool = False,
    force: bool = False,
    compile_cache: bool = True,
) -> build_service.BuildRun:
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    http = HTTPClient(RetryPolicy(attempts=1))
    planned = build_service.resolve_and_plan(
        project,
        cfg,
        cfg.targets,
        force=force,
        load_tests=load_test,
        retry_failed=retry_failed,
        http=http,
    )
    isolation = BuildIsolation(runner, env={"HABANA_ISOLATION": "chroot"})
    return build_service.execute(
        project,
        cfg,
        planned,
        Podman(runner, isolation),
        PlainReporter(Console(file=io.StringIO())),
        build_service.BuildOptions(
            jobs=2, push=push, load_test=load_test, compile_cache=compile_cache
        ),
    )


def pushes(runner: FakePodman) -> list[str]:
    """What was published, as docker://<repository>:<tag>: each image copied to the registry
    by digest (its layout sits in the job's folder, named by the tag)."""
    published = []
    for argv in runner.commands("skopeo", "copy"):
        layout = Path(argv[-2].split(":")[1])
        repository = argv[-1].split("@")[0]
        published.append(f"{repository}:{layout.parent.name}")
    return published
