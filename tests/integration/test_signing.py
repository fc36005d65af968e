"""Signed images end to end: a canary key through a whole signed build (it reaches sign-file and
nothing else), the PKCS#7 check on the real modules, and the target kernel enforcing signatures."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.vendor_packages import EXAMPLE_MODULES
from habana_tasks.build import labels
from habana_tasks.cli import maintenance_commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.config.targets import SigningFiles
from habana_tasks.core.errors import UsageError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import RegistryClient
from habana_tasks.verification import load_testing, secure_boot, verdict
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.signing import load_signer, signature_problems
from habana_tasks.verification.worker import WorkerTools
from tests.conftest import ROOT, RecordProperty, invoke_argv, require_tools
from tests.integration.conftest import DRIVER, KERNELS, UpstreamFixture
from tests.keys import make_pair
from tests.watch import argv_snapshots

pytestmark = [pytest.mark.integration, pytest.mark.reliability("secrets")]
KERNEL = KERNELS[1]


def canaries(key: Path) -> list[bytes]:
    """What would betray the key: each base64 line of its PEM body, and its DER bytes."""
    lines = [line for line in key.read_bytes().splitlines() if line and b"-----" not in line]
    der = base64.b64decode(b"".join(lines))
    return [*lines, der[-64:]]


def hits(data: bytes, marks: list[bytes]) -> bool:
    return any(mark in data for mark in marks)


@pytest.fixture(scope="module")
def signed(
    test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """One signed image (6.1.0-56), built by `invoke build` as a user runs it, argv watched."""
    require_tools("openssl")
    work = tmp_path_factory.mktemp("signed")
    pair = make_pair(work / "keys", "habana library signing key")
    versions = test_upstream.versions(work / "versions.toml", (KERNEL,), repository="library/sig")
    versions.write_text(
        versions.read_text()
        + f'\n[signing]\ncertificate = "{pair.certificate}"\nkey = "{pair.key}"\n'
    )
    cache = work / "cache"
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=argv_snapshots, args=(stop, seen), daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        done = subprocess.run(
            invoke_argv("build", "--kernel", KERNEL, "--versions", str(versions)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
            env={**os.environ, "HABANA_CACHE_DIR": str(cache)},
        )
    finally:
        stop.set()
        watcher.join()
    return {
        "pair": pair,
        "versions": versions,
        "cache": cache,
        "argv": seen,
        "output": done.stdout + done.stderr,
        "code": done.returncode,
        "seconds": time.monotonic() - started,
        "work": work,
    }


def test_a_signed_image_is_built_checked_labelled_and_pushed(
    signed: dict[str, object], test_upstream: UpstreamFixture, record_property: RecordProperty
) -> None:
    assert signed["code"] == 0, signed["output"]
    pair = signed["pair"]
    assert isinstance(pair, SigningFiles) and isinstance(signed["versions"], Path)
    signer = load_signer(pair)
    target = versions_file.load(signed["versions"]).targets[0]
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert remote.labels[labels.SIGNING] == "signed"
    assert remote.labels[labels.SIGNER] == "habana library signing key"
    assert remote.labels[labels.PREFIX + "signing.key-id"] == signer.key_id
    assert remote.labels[labels.INPUT_LABELS["signing certificate"]] == signer.certificate_sha256
    # A signing library proves each image on a Secure Boot node before it pushes it.
    assert remote.labels[labels.LOAD_TESTED] == "secure-boot"
    assert "secure-boot" in str(signed["output"])  # the summary says which boot
    record_property("signed build seconds", f"{signed['seconds']:.1f}")


def test_the_key_reaches_nothing_but_sign_file(
    signed: dict[str, object], test_upstream: UpstreamFixture, record_property: RecordProperty
) -> None:
    pair = signed["pair"]
    assert isinstance(pair, SigningFiles) and isinstance(signed["versions"], Path)
    assert isinstance(signed["cache"], Path) and isinstance(signed["work"], Path)
    marks = canaries(pair.key)
    target = versions_file.load(signed["versions"]).targets[0]
    runner = test_upstream.runner
    found: list[str] = []
    if hits(str(signed["output"]).encode(), marks):
        found.append("console output")
    found += [f"argv: {line[:80]}" for line in signed["argv"] if hits(line.encode(), marks)]  # type: ignore[attr-defined]
    for path in signed["cache"].rglob("*"):  # logs, report.json, build contexts
        if path.is_file() and not path.is_symlink() and hits(path.read_bytes(), marks):
            found.append(str(path))
    inspect = runner.run(["podman", "image", "inspect", target.image], keep_output=True).text
    history = runner.run(["podman", "history", "--no-trunc", target.image], keep_output=True).text
    found += [what for what, text in (("inspect", inspect), ("history", history))
              if hits(text.encode(), marks)]  # fmt: skip
    archive = signed["work"] / "image.tar"
    runner.run(["podman", "save", "--format", "docker-archive", "-o", str(archive), target.image])
    with tarfile.open(archive) as outer:
        for member in outer:
            handle = outer.extractfile(member) if member.isfile() else None
            if handle is not None and hits(handle.read(), marks):
                found.append(f"layer {member.name}")
    assert found == []
    record_property("canary key hits", "0")


def test_every_module_verifies_and_a_changed_or_foreign_one_does_not(
    signed: dict[str, object], test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    assert isinstance(signed["versions"], Path) and isinstance(signed["pair"], SigningFiles)
    signer = load_signer(signed["pair"])
    other = load_signer(make_pair(tmp_path / "other", "someone else"))
    target = versions_file.load(signed["versions"]).targets[0]
    rootfs = tmp_path / "rootfs.tar"
    Podman(test_upstream.runner).export_rootfs(target.image, rootfs)
    runner = ProcessRunner()
    with tarfile.open(rootfs) as tar:
        for module in EXAMPLE_MODULES:
            handle = tar.extractfile(f"opt/lib/modules/{KERNEL}/extra/{module}.ko")
            assert handle is not None
            path = tmp_path / f"{module}.ko"
            data = handle.read()
            path.write_bytes(data)
            assert signature_problems(runner, module, path, signer, KERNEL, {"sha256"}) == []
            wrong = signature_problems(runner, module, path, other, KERNEL, None)
            assert wrong and "does not verify against 'someone else'" in wrong[0]
            path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
            tampered = signature_problems(runner, module, path, signer, KERNEL, None)
            assert tampered and "tampered, or signed with another key" in tampered[0]


def test_the_kernel_enforcing_signatures_refuses_unsigned_and_unknown_key_modules(
    signed: dict[str, object],
    library: tuple[Project, Path],
    test_upstream: UpstreamFixture,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """module.sig_enforce=1 on the stock target kernel. A key the kernel does not trust is
    refused like an unsigned module (its own reason); the kernel's own in-tree modules, signed by
    the distribution, still load from the node (ib_core and ib_uverbs below)."""
    assert isinstance(signed["versions"], Path) and isinstance(signed["pair"], SigningFiles)
    podman = Podman(ProcessRunner())
    unsigned_target = versions_file.load(library[1]).targets[1]
    signed_target = versions_file.load(signed["versions"]).targets[0]
    rootfs = {}
    for name, image in (("unsigned", unsigned_target.image), ("signed", signed_target.image)):
        rootfs[name] = tmp_path / f"{name}.tar"
        podman.export_rootfs(image, rootfs[name])
    booted = boot_all(
        podman,
        unsigned_target.toolkit_image,
        list(reversed(EXAMPLE_MODULES)),  # the stand-in first: its in-tree deps load first
        tmp_path,
        {name: (tar, {"enforce_signatures": True}) for name, tar in rootfs.items()},
        load_signer(signed["pair"]).key_id,
    )
    outcomes = {}
    for name, (outcomes[name], console) in booted.items():
        assert "insmod /tmp/opt/lib/modules/" in console
        # Debian's own ib_core is signed by a key the kernel trusts: it loaded.
        assert "ib_core" in console
    unsigned, signed_result = outcomes["unsigned"], outcomes["signed"]
    assert not unsigned.passed and not signed_result.passed
    # The first module modprobe loads (the stand-in) is the one named.
    assert unsigned.reason == (
        "habana_example_ib refused: the module is unsigned; a kernel that enforces signatures "
        "(as under Secure Boot) loads only signed modules (kernel: Loading of unsigned module "
        "is rejected)"
    ), unsigned.reason
    # Booted without UEFI firmware: no machine-owner key can vouch for the library's modules.
    assert signed_result.reason == (
        "habana_example_ib refused: the kernel loaded no machine-owner keys (the node did not "
        "boot through UEFI firmware: there is no MokListRT to read), so no enrolled key can "
        "vouch for the module (kernel: Loading of module with unavailable key is rejected)"
    ), signed_result.reason
    record_property("enforcing boot seconds", f"{signed_result.seconds:.1f}")


def test_kmm_sign_flow_is_refused_for_images_the_library_signed(
    signed: dict[str, object], tmp_path: Path
) -> None:
    assert isinstance(signed["versions"], Path)
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    with pytest.raises(UsageError, match=r"already signed \(by 'habana library signing key'\)"):
        maintenance_commands.kmm_module(
            project, DRIVER, str(signed["versions"]), sign_key_secret="k", sign_cert_secret="c"
        )


def boot_all(
    podman: Podman,
    toolkit: str,
    modules: Sequence[str],
    work: Path,
    cases: Mapping[str, tuple[Path, dict[str, Any]]],
    key_id: str = "",
) -> dict[str, tuple[load_testing.LoadTestResult, str]]:
    """Exported images booted in KERNEL on the node its toolkit makes (as the load test does),
    two at a time (a TCG guest uses one core); each case's result and the guest's console.
    A refusal is explained with the kernel's configuration and the signing key's id."""
    store = KernelModuleStore(podman, work / "kernels")
    workers = WorkerTools(podman, ROOT / "Dockerfile", work / "kernels")
    vmlinuz = store.vmlinuz(toolkit, KERNEL)
    trust = verdict.TrustContext(store.load(toolkit, KERNEL).config or None, (), key_id)
    nodes = {
        name: load_testing.node_for(store, workers, tar, toolkit, KERNEL, modules)
        for name, (tar, _) in cases.items()
    }

    def one(name: str) -> tuple[load_testing.LoadTestResult, str]:
        tar, options = cases[name]
        lines: list[str] = []
        result = load_testing.boot_and_load(
            podman, tar, vmlinuz, KERNEL, modules, work / name, nodes[name],
            on_line=lines.append, **{"trust": trust, **options},
        )  # fmt: skip
        return result, "\n".join(lines)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(one, cases), strict=True))


def tampered_copy(rootfs: Path, module: str, out: Path) -> Path:
    """The image's root filesystem with one byte of one signed module changed after signing."""
    with tarfile.open(rootfs) as source, tarfile.open(out, "w") as copy:
        for member in source:
            handle = source.extractfile(member) if member.isfile() else None
            data = handle.read() if handle else None
            if data is not None and member.name.endswith(f"/{module}.ko"):
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            copy.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_a_secure_boot_node_loads_the_signed_image_and_refuses_the_rest(
    signed: dict[str, object],
    library: tuple[Project, Path],
    test_upstream: UpstreamFixture,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    """OVMF with Secure Boot on and Microsoft's keys, shim, Debian's GRUB, the stock kernel; the
    library's certificate enrolled as a machine-owner key. The signed image loads; an unsigned
    image, the signed image on a node that enrolled another key, and a module changed after
    signing are refused with the kernel's own reason."""
    assert isinstance(signed["versions"], Path) and isinstance(signed["pair"], SigningFiles)
    signer = load_signer(signed["pair"])
    other = load_signer(make_pair(tmp_path / "other", "someone else"))
    podman = Podman(ProcessRunner())
    ours = secure_boot.prepare(ROOT, tmp_path / "cache", signer.certificate_pem)
    theirs = secure_boot.prepare(ROOT, tmp_path / "cache", other.certificate_pem)
    unsigned_target = versions_file.load(library[1]).targets[1]
    signed_target = versions_file.load(signed["versions"]).targets[0]
    toolkit = unsigned_target.toolkit_image
    rootfs = {}
    for name, image in (("unsigned", unsigned_target.image), ("signed", signed_target.image)):
        rootfs[name] = tmp_path / f"{name}.tar"
        podman.export_rootfs(image, rootfs[name])
    rootfs["tampered"] = tampered_copy(rootfs["signed"], EXAMPLE_MODULES[0], tmp_path / "t.tar")
    cases = {
        "signed": (rootfs["signed"], {"secure_boot": ours}),
        "unsigned": (rootfs["unsigned"], {"secure_boot": ours}),
        "foreign key": (rootfs["signed"], {"secure_boot": theirs}),
        "tampered": (rootfs["tampered"], {"secure_boot": ours}),
    }
    booted = boot_all(podman, toolkit, signed_target.modules, tmp_path, cases, signer.key_id)
    outcomes, consoles = {}, {}
    for name, (outcomes[name], consoles[name]) in booted.items():
        # Every boot is a Secure Boot node's, by the guest's own account.
        assert "secureboot: Secure boot enabled" in consoles[name], consoles[name]
        assert "LOAD-TEST: lockdown none [integrity] confidentiality" in consoles[name]
        assert outcomes[name].boot == "secure-boot"
    assert outcomes["signed"].passed, (outcomes["signed"].reason, consoles["signed"])
    assert "UEFI:MokListRT (MOKvar table)" in consoles["signed"]
    assert f"Loaded X.509 cert '{signer.subject}" in consoles["signed"]
    # Each refusal names its cause, with what the kernel (or modprobe) said.
    named = {
        "unsigned": "habanalabs refused: the module is unsigned; a kernel that enforces "
        "signatures (as under Secure Boot) loads only signed modules (kernel: Loading of "
        "unsigned module is rejected)",
        "foreign key": f"habanalabs refused: the library's certificate (key id {signer.key_id}) "
        "is not among the keys the kernel loaded (",
        # The signature does not verify: the kernel says no more than modprobe.
        "tampered": "habanalabs refused: the module's signature does not verify: it changed "
        "after it was signed (modprobe: ERROR: could not insert 'habanalabs': Key was "
        "rejected by service)",
    }
    for name, reason in named.items():
        assert not outcomes[name].passed and outcomes[name].reason.startswith(reason), (
            name,
            outcomes[name].reason,
        )
    foreign = outcomes["foreign key"]
    assert other.subject in foreign.reason and "enroll it as a machine-owner key" in foreign.reason
    assert foreign.reason.endswith("(kernel: Loading of module with unavailable key is rejected)")
    assert f"Loaded X.509 cert '{other.subject}" in consoles["foreign key"]
    assert f"Loaded X.509 cert '{signer.subject}" not in consoles["foreign key"]
    record_property("secure boot load test seconds", f"{outcomes['signed'].seconds:.1f}")


def test_load_test_secure_boot_retests_the_published_signed_image(
    signed: dict[str, object], tmp_path: Path
) -> None:
    """`invoke load-test --secure-boot` as a user runs it: the pushed image pulled and booted on
    a Secure Boot node with the library's certificate enrolled; report.json says which boot."""
    assert isinstance(signed["versions"], Path)
    done = subprocess.run(
        invoke_argv(
            "load-test", "--secure-boot", "--kernel", KERNEL, "--versions", str(signed["versions"])
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "HABANA_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = (tmp_path / "cache" / "logs").glob("load-test-*/report.json")
    (result,) = json.loads(report.read_text())
    assert (result["passed"], result["boot"], result["kernel"]) == (True, "secure-boot", KERNEL)
