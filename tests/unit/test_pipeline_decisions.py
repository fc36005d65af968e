"""The pipeline's decisions with fakes at both boundaries (FakeRunner for podman, kmod and qemu;
FakeRegistry for the registry API), in seconds. The same paths run for real in
tests/integration/test_pipeline.py and test_signals.py."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import tarfile
import threading
from pathlib import Path

import pytest
from rich.console import Console

from habana_tasks.build import labels, metadata
from habana_tasks.build import service as build_service
from habana_tasks.build.plan import Action
from habana_tasks.build.results import JobResult, JobStatus, read_report
from habana_tasks.cli.progress import PlainReporter
from habana_tasks.config import targets, versions_file
from habana_tasks.config.flavours import MINIMAL
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.errors import Interrupted
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
                self.terminated.wait(10)
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


@pytest.fixture(autouse=True)
def fixed_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package boundary: reading an RPM is tested for real in test_driver_packages.py."""
    monkeypatch.setattr(metadata, "read_git_sha", lambda path, version, name=None: "abcdef1")


def pushes(runner: FakePodman) -> list[str]:
    """What was published, as docker://<repository>:<tag>: each image copied to the registry
    by digest (its layout sits in the job's folder, named by the tag)."""
    published = []
    for argv in runner.commands("skopeo", "copy"):
        layout = Path(argv[-2].split(":")[1])
        repository = argv[-1].split("@")[0]
        published.append(f"{repository}:{layout.parent.name}")
    return published


def test_every_target_is_built_checked_pushed_and_verified(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    runner = FakePodman(fake)
    result = run(runner, library(fake, tmp_path), tmp_path)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    assert len(pushes(runner)) == 2
    for job, result_ in zip(result.planned.jobs, result.results, strict=True):
        pushed = json.loads(fake.manifests[f"library/driver:{job.target.tag}"][1])
        config_blob = json.loads(fake.blobs[pushed["config"]["digest"]])
        assert config_blob["config"]["Labels"][labels.FINGERPRINT] == job.fingerprint
        assert result_.digest is not None
        assert pushed["annotations"] == labels.image_annotations(config_blob["config"]["Labels"])
    # Every build is cut off the network (chroot isolation: in an empty namespace, as root),
    # takes one timestamp and nothing from the layer cache (keyed on neither): per pair, the
    # compile's inputs, the compile, the assembly.
    builds = [c for c in runner.calls if "build" in c and "--file" in c]
    stages = [c[c.index("--target") + 1] if "--target" in c else "" for c in builds]
    assert sorted(stages) == sorted(["compile-inputs", "compiled", ""] * 2)
    for argv in builds:
        assert argv[:3] == ["unshare", "--net", "--"] or "--network" in argv
        assert "host" not in argv and "--no-cache" in argv
        assert argv[argv.index("--timestamp") + 1] == "0"


def test_a_failed_pull_stays_in_its_own_target(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)
    failing = next(
        j
        for j in build_service.resolve_and_plan(
            Project(ROOT, cache_dir=tmp_path / "c0"), cfg, cfg.targets, load_tests=False
        ).jobs
        if j.target.kernel == KERNELS[0]
    )
    assert failing.inputs is not None
    runner.failing_pulls.add(failing.inputs.toolkit.pinned)
    result = run(runner, cfg, tmp_path)
    first, second = result.results
    assert first.status is JobStatus.FAILED and "manifest unknown" in first.detail
    assert first.failure is not None and first.failure.step == "pull"
    assert second.status is JobStatus.OK
    assert result.exit_code == errors.TARGET_FAILED
    assert pushes(runner) == [f"docker://{cfg.targets[1].image}"]


def test_a_failed_check_never_pushes(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    runner.vermagic[KERNELS[1]] = f"{KERNELS[0]} SMP preempt mod_unload"
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    assert result.results[0].status is JobStatus.OK
    assert result.results[1].status is JobStatus.FAILED
    assert f"vermagic names kernel '{KERNELS[0]}'" in result.results[1].detail
    assert pushes(runner) == [f"docker://{cfg.targets[0].image}"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"depends": "ib_uverbs"}, "depends on ib_uverbs, which is neither in the image nor a"),
        ({"depends": "crc32c"}, "depends on crc32c, which {release} has built in"),
        (
            {"imports": ["0x00000001\tib_register_client"]},
            "disagrees about the version of ib_register_client (e.g. ib_register_client: "
            f"0x00000001 here, 0x{IB_REGISTER_CRC:08x} in {{release}}'s ",
        ),
        ({"imports": ["0x00000001\tib_gone"]}, "needs ib_gone, exported by neither the image"),
    ],
)
def test_a_module_that_would_not_resolve_on_its_kernel_is_never_pushed(
    fake: FakeRegistry, tmp_path: Path, change: dict[str, object], why: str
) -> None:
    """The checks read each toolkit's modules.dep and Module.symvers: with the kernel's own
    answers (ib_core a module, crc32c built in, ib_register_client's CRC) every image passes
    (test_every_target_is_built_checked_pushed_and_verified); any dependency or symbol version
    its kernel does not have fails the image before its push."""
    runner = FakePodman(fake)
    for name, value in change.items():
        setattr(runner, name, value)
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    for target, outcome in zip(cfg.targets, result.results, strict=True):
        assert outcome.status is JobStatus.FAILED
        assert why.format(release=target.kernel) in outcome.detail, outcome.detail
    assert pushes(runner) == []


def test_a_failed_load_test_is_never_pushed(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    runner.guest = [
        f"{MARK} booted {{release}}",
        f"{MARK} FAIL modprobe -d /opt habanalabs failed: Invalid argument",
        "[    2.1] habanalabs: disagrees about version of symbol pci_enable_device",
    ]
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path, load_test=True)
    assert len(runner.commands("qemu-system-x86_64")) == 2  # each image was booted
    for outcome in result.results:
        assert outcome.status is JobStatus.FAILED
        assert "modprobe -d /opt habanalabs failed" in outcome.detail, outcome.detail
    assert pushes(runner) == []


def test_a_passing_load_test_is_pushed_and_labelled(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path, load_test=True)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    assert len(pushes(runner)) == 2
    built = list(runner.labels.values())
    assert len(built) == 2
    assert {labels_[labels.PREFIX + "load-tested"] for labels_ in built} == {"plain"}
    assert {r.load_test_boot for r in result.results} == {"plain"}


def test_no_push_builds_and_checks_only(fake: FakeRegistry, tmp_path: Path) -> None:
    runner = FakePodman(fake)
    result = run(runner, library(fake, tmp_path), tmp_path, push=False)
    assert all(r.status is JobStatus.OK and "not pushed" in r.detail for r in result.results)
    assert pushes(runner) == [] and len(runner.commands("podman", "tag")) == 2


def test_an_interrupt_stops_every_child_and_pushes_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    runner = FakePodman(fake)
    runner.block_builds.set()
    cfg = library(fake, tmp_path)

    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_building() -> None:
        runner.building.wait(10)
        # To the main thread, as a terminal's Ctrl-C reaches it (raise_signal would signal this
        # thread, and the main thread would see it only once a build returned).
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_once_building, daemon=True).start()
    # Ctrl-C as a terminal delivers it, even when this test runs in a background job that
    # inherited SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted) as info:
            run(runner, cfg, tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert runner.terminated.is_set()  # every child was told to stop
    assert pushes(runner) == []
    # A build that failed because it was stopped says nothing of its inputs: no failure record.
    assert [key for key in fake.manifests if ":failed-" in key] == []
    stopped = [r.status for r in info.value.results if isinstance(r, JobResult)]
    assert stopped == [JobStatus.INTERRUPTED] * 2
    assert info.value.report is not None and info.value.report.is_file()


def test_inputs_are_resolved_once_per_distinct_reference(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    planned = build_service.resolve_and_plan(project, cfg, cfg.targets)
    base_gets = [p for m, p, _ in fake.log if m == "GET" and p == "/v2/base/debian/manifests/12"]
    assert len(base_gets) == 1  # two targets share the base: asked once
    toolkit_gets = {p for m, p, _ in fake.log if "/v2/dtk/manifests/" in p}
    assert toolkit_gets == {f"/v2/dtk/manifests/{k}" for k in KERNELS}
    assert planned.packages.downloads == 1  # one package URL for both targets


def test_a_run_says_what_failed_in_a_typed_record_and_its_exit_code(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """A failed check is a definite failure of its target: exit 3, the step and the image in
    the record, and the same record in report.json."""
    runner = FakePodman(fake)
    runner.vermagic[KERNELS[1]] = f"{KERNELS[0]} SMP preempt mod_unload"
    cfg = library(fake, tmp_path)
    result = run(runner, cfg, tmp_path)
    ok, failed = result.results
    assert ok.failure is None
    assert failed.failure is not None
    assert (failed.failure.step, failed.failure.subject) == ("check", cfg.targets[1].image)
    assert failed.failure.transient is False
    assert result.exit_code == errors.TARGET_FAILED
    assert result.report is not None
    report = json.loads(result.report.read_text())
    assert report[1]["failure"] == {
        "step": "check",
        "why": failed.failure.why,
        "subject": cfg.targets[1].image,
        "transient": False,
        "origin": errors.INPUTS,
    }
    assert report[0]["failure"] is None


def test_a_registry_that_cannot_answer_is_exit_4_and_builds_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """The library's own repository answers 503: its state is unknown, so nothing is built or
    pushed, and the exit code tells a script to retry rather than to look at a build."""
    runner = FakePodman(fake)
    cfg = library(fake, tmp_path)

    def unavailable(path: str) -> tuple[int, dict[str, str], bytes] | None:
        return (503, {}, b"") if path.startswith("/v2/library/driver/") else None

    fake.hook = unavailable
    result = run(runner, cfg, tmp_path)
    assert all(r.failure is not None and r.failure.transient for r in result.results)
    assert {r.failure.step for r in result.results if r.failure} == {"registry state"}
    assert result.exit_code == errors.UNKNOWN_STATE
    assert pushes(runner) == []


def test_a_failed_result_always_carries_its_failure() -> None:
    """The exit code is computed from failures: a failed result without one is refused."""
    with pytest.raises(ValueError, match="status failed with failure None"):
        JobResult("t", Action.BUILD, JobStatus.FAILED, "broke")
    with pytest.raises(ValueError, match="status ok with failure"):
        JobResult("t", Action.BUILD, JobStatus.OK, "ok", failure=errors.Failure("build", "x"))


@pytest.mark.parametrize(
    ("transient", "expected"),
    [((), errors.OK), ((True,), 4), ((False,), 3), ((True, False), 3), ((True, True), 4)],
)
def test_a_definite_failure_outranks_an_unknown(transient: tuple[bool, ...], expected: int) -> None:
    failures = [errors.Failure("build", "why", "x", t) for t in transient]
    assert errors.exit_code_for([None, *failures]) == expected


def test_a_forced_rebuild_takes_the_compiled_files_from_the_cache(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    cfg = library(fake, tmp_path)
    first = FakePodman(fake)
    cold = run(first, cfg, tmp_path)
    assert sorted(first.compiles) == sorted(KERNELS)
    assert [r.compiled.cache for r in cold.results if r.compiled] == ["miss", "miss"]
    # --force: every pair assembled, checked and pushed again, nothing compiled.
    second = FakePodman(fake)
    warm = run(second, cfg, tmp_path, force=True)
    assert [r.status for r in warm.results] == [JobStatus.OK, JobStatus.OK]
    assert second.compiles == [] and len(pushes(second)) == 2
    # What each toolkit gives the compile was digested once, in the first run.
    digested = [c for c in (*first.calls, *second.calls) if "compile-inputs" in c]
    assert len(digested) == len(KERNELS)
    compiled = [r.compiled for r in warm.results]
    assert [c.cache if c else None for c in compiled] == ["hit", "hit"]
    assert all(c and c.inputs["kernel release"] in KERNELS for c in compiled)
    assert warm.report is not None
    report = json.loads(warm.report.read_text())
    assert [entry["compiled"]["cache"] for entry in report] == ["hit", "hit"]
    assert read_report(warm.report) == list(warm.results)
    # --no-compile-cache: compiled afresh, the entry refreshed.
    third = FakePodman(fake)
    fresh = run(third, cfg, tmp_path, force=True, compile_cache=False)
    assert sorted(third.compiles) == sorted(KERNELS)
    assert [r.compiled.cache for r in fresh.results if r.compiled] == ["refreshed"] * 2
    log = Path(fresh.results[0].log or "").read_text()
    assert "compile key " in log and "driver package: " in log


def test_the_compile_cache_lives_where_habana_compile_cache_dir_says(
    fake: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-compile-cache"
    monkeypatch.setenv("HABANA_COMPILE_CACHE_DIR", str(shared))
    cfg = library(fake, tmp_path)
    run(FakePodman(fake), cfg, tmp_path)
    assert len(list((shared / "entries").iterdir())) == len(KERNELS)
    assert not (tmp_path / "cache" / "compile").exists()
    # Another checkout (another cache directory) with the same variable compiles nothing.
    other = FakePodman(fake)
    project = Project(ROOT, cache_dir=tmp_path / "other-cache")
    planned = build_service.resolve_and_plan(project, cfg, cfg.targets, force=True)
    build_service.execute(
        project,
        cfg,
        planned,
        Podman(other, BuildIsolation(other, env={"HABANA_ISOLATION": "chroot"})),
        PlainReporter(Console(file=io.StringIO())),
        build_service.BuildOptions(load_test=False),
    )
    assert other.compiles == [] and len(pushes(other)) == len(KERNELS)


def test_the_compile_cache_keeps_to_its_configured_size(fake: FakeRegistry, tmp_path: Path) -> None:
    """[cache] max_size read from the versions file by a real run: with 0, each store evicts
    every other entry, and every build still gets its files (a copy checked on read)."""
    cfg = library(fake, tmp_path, extra='[cache]\nmax_size = "0"\n')
    assert cfg.cache.max_size == 0
    runner = FakePodman(fake)
    result = run(runner, cfg, tmp_path)
    assert [r.status for r in result.results] == [JobStatus.OK, JobStatus.OK]
    entries = list((tmp_path / "cache" / "compile" / "entries").iterdir())
    assert len(entries) == 1 and sorted(runner.compiles) == sorted(KERNELS)
