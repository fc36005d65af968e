"""Load test: boot the exact target kernel under qemu and load the driver the way KMM does,
reading the verdict off the console.

The guest is the node. The image's root filesystem sits at /image; as KMM's image-extractor
init container does, the image's own /bin/sh, mkdir and cp (as the image's user) copy its
module tree into a shared /tmp. The worker's modprobe (the toolkit's kmod, as KMM's worker
image has its own) then loads the modules from /tmp/opt. The in-tree modules the image's
modules.dep reaches through its `host` link are taken from the target kernel (its toolkit) and
put at /host/lib/modules/<release>, where KMM's worker sees the node's own modules; only that
closure is added, so the initramfs stays small.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import (
    CommandError,
    CommandTimeout,
    Failure,
    HabanaError,
    HostError,
)
from habana_tasks.core.log_cause import cause_of
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import RegistryClient
from habana_tasks.verification import card, initramfs
from habana_tasks.verification import secure_boot as boot_chain
from habana_tasks.verification.console import MARK
from habana_tasks.verification.guest_init import init_script
from habana_tasks.verification.kernel_modules import KernelModuleStore, module_name
from habana_tasks.verification.qemu import console_machine
from habana_tasks.verification.secure_boot import SecureBootSetup
from habana_tasks.verification.verdict import TrustContext, evaluate
from habana_tasks.verification.worker import WorkerTools

IMAGE_ROOT = "image"  # where the image's root filesystem sits in the guest
DEFAULT_TIMEOUT = 120.0
# Signature enforcement, as on a Secure Boot node (lockdown makes the kernel enforce it).
ENFORCE_SIGNATURES = "module.sig_enforce=1"
CMDLINE = "console=ttyS0 panic=-1 quiet"
MEMORY_MB = 1024
# The node's module index as its kernel package left it (what the node's kmod reads: udev's
# lookup of the card's modalias, the worker's `modprobe -r`), beside the module files it needs.
NODE_INDEX = (
    "modules.dep.bin",
    "modules.alias.bin",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.softdep",
    "modules.weakdep",
    "modules.devname",
)


@dataclass(frozen=True)
class LoadTestResult:
    """One load test, as the pipeline, the table and report.json show it. A test that never
    booted (the image could not be pulled) has no kernel, seconds or initramfs."""

    passed: bool
    reason: str
    kernel: str  # the release booted; "" when nothing was booted
    seconds: float
    initramfs_bytes: int
    evidence: tuple[str, ...] = ()
    # The node's in-tree modules the image needed (paths under /lib/modules/<release>).
    node_modules: tuple[str, ...] = ()
    image: str | None = None  # what was tested, when it was a pushed or named image
    boot: str = boot_chain.PLAIN  # or SECURE_BOOT: firmware, shim, GRUB, lockdown
    log: str | None = None
    failure: Failure | None = None  # set by retest_image when the image did not pass


def qemu_argv(
    kernel: Path,
    initrd: Path,
    memory_mb: int = MEMORY_MB,
    accel: str = "tcg",
    kernel_args: Sequence[str] = (),
) -> list[str]:
    """The kernel and initramfs handed to qemu directly (a plain boot)."""
    return [
        "qemu-system-x86_64",
        *console_machine(memory_mb, accel),
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        " ".join((CMDLINE, *kernel_args)),
    ]


def image_file(rootfs_tar: Path, name: str) -> str:
    """A text file of the exported image ("" when it has none)."""
    with tarfile.open(rootfs_tar) as tar:
        try:
            handle = tar.extractfile(name) or tar.extractfile("./" + name)
        except KeyError:
            return ""
        return handle.read().decode("utf-8", "replace") if handle else ""


def in_tree_closure(rootfs_tar: Path, release: str) -> tuple[str, ...]:
    """The in-tree modules (relative to /lib/modules/<release>) that the image's modules.dep
    reaches through its `host` link, for the image's own modules only."""
    text = image_file(rootfs_tar, f"opt/lib/modules/{release}/modules.dep")
    needed: set[str] = set()
    for line in text.splitlines():
        module, sep, deps = line.partition(":")
        if sep and not module.startswith("host/"):
            needed.update(d[len("host/") :] for d in deps.split() if d.startswith("host/"))
    return tuple(sorted(needed))


@dataclass(frozen=True)
class Node:
    """What the guest holds besides the image: the worker's tools (a tar), the node's in-tree
    modules (path under /lib/modules/<release> -> content), the card's devices (modaliases) and
    which of those modules the image itself needs (the rest are there for the card)."""

    worker: Path
    modules: Mapping[str, bytes] = field(default_factory=dict)
    card: tuple[str, ...] = ()
    needed: tuple[str, ...] = ()


def node_for(
    store: KernelModuleStore,
    workers: WorkerTools,
    rootfs_tar: Path,
    toolkit_image: str,
    release: str,
    modules: Sequence[str],
    on_line: LineSink | None = None,
) -> Node:
    """The node an image lands on, with the card: the toolkit's worker tools, the in-tree
    modules that the image's modules.dep reaches, and the modules of the kernel the toolkit
    carries that claim the card's devices (udev loads them), with what they depend on."""
    kernel = store.load(toolkit_image, release)
    aliases = image_file(rootfs_tar, f"opt/lib/modules/{release}/modules.alias")
    devices = card.card_devices(aliases, modules)
    claiming = card.claimants(kernel.aliases, devices)
    own = card.closure(kernel.depends, [kernel.modules[m] for m in claiming])
    needed = in_tree_closure(rootfs_tar, release)
    files = store.files(toolkit_image, release, {*needed, *own, *NODE_INDEX})
    return Node(
        workers.tar(toolkit_image, on_line),
        {path: file.read_bytes() for path, file in files.items()},
        devices,
        needed,
    )


def run_load_test(
    podman: Podman,
    store: KernelModuleStore,
    workers: WorkerTools,
    rootfs_tar: Path,
    toolkit_image: str,
    target: BuildTarget,
    work: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_line: LineSink | None = None,
    secure_boot: SecureBootSetup | None = None,
    removes: Sequence[str] = (),
) -> LoadTestResult:
    """An exported image booted in the kernel its toolkit image carries, on a node made of that
    toolkit's worker tools and that kernel's in-tree modules (those the image depends on, and
    those claiming the card), KMM's worker removing `removes` first."""
    kernel = store.vmlinuz(toolkit_image, target.kernel)
    config = store.load(toolkit_image, target.kernel).config
    trust = TrustContext(
        config or None,
        target.node_kernel_args,
        secure_boot.key_id if secure_boot is not None else "",
    )
    return boot_and_load(
        podman,
        rootfs_tar,
        kernel,
        target.kernel,
        target.modules,
        work,
        node_for(store, workers, rootfs_tar, toolkit_image, target.kernel, target.modules, on_line),
        firmware=target.firmware_url is not None,
        timeout=timeout,
        on_line=on_line,
        secure_boot=secure_boot,
        trust=trust,
        removes=removes,
    )


def boot_and_load(
    podman: Podman,
    rootfs_tar: Path,
    kernel: Path,
    release: str,
    modules: Sequence[str],
    work: Path,
    node: Node,
    *,
    firmware: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    on_line: LineSink | None = None,
    enforce_signatures: bool = False,
    secure_boot: SecureBootSetup | None = None,
    trust: TrustContext | None = None,
    removes: Sequence[str] = (),
) -> LoadTestResult:
    """Boot `kernel` on `node` with the image at /image; the node's in-tree module files go
    where KMM's worker sees them, and the worker removes the in-tree `removes` (as the Module's
    inTreeModulesToRemove says) before loading the image's. With `enforce_signatures`, the
    kernel refuses modules not signed by a key it trusts. With `secure_boot`, the guest boots
    as a Secure Boot node does (firmware, shim, GRUB) and passes only if it reports Secure Boot
    on and lockdown."""
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.cpio"
    script = init_script(modules, release, firmware, node.card, removes)
    extra = {"init": (0o755, script)}
    for path, data in node.modules.items():
        extra[f"host/lib/modules/{release}/{path}"] = (0o644, data)
    sources = [(node.worker, ""), (rootfs_tar, IMAGE_ROOT)]
    size = initramfs.rootfs_to_cpio(sources, initrd, extra)
    provided = tuple(module_name(p) for p in node.needed)
    accel = os.environ.get("HABANA_QEMU_ACCEL", "tcg")
    trust = trust or TrustContext()
    kernel_args = [*trust.kernel_args, *([ENFORCE_SIGNATURES] if enforce_signatures else [])]
    if secure_boot is None:
        argv = qemu_argv(kernel, initrd, accel=accel, kernel_args=kernel_args)
    else:  # the node's chain: firmware, shim, GRUB, the kernel
        cmdline = " ".join((CMDLINE, *kernel_args))
        argv = boot_chain.node_argv(secure_boot, work, kernel, initrd, cmdline, MEMORY_MB, accel)
    boot = boot_chain.boot_name(secure_boot)
    reached_init: list[str] = []  # the guest's own word that the kernel started /init

    def watch(line: str) -> None:
        reached_init.extend([line] if f"{MARK} booted " in line else [])
        if on_line is not None:
            on_line(line)

    started = time.monotonic()
    try:
        done = podman.runner.run(
            argv, timeout=timeout, keep_output=True, check=False, on_line=watch
        )
        lines: Sequence[str] = done.output
    except CommandTimeout as exc:
        seconds = time.monotonic() - started
        if not reached_init:
            # A stock kernel that never reached /init: qemu or the host was too slow or hung.
            raise HostError(
                f"the guest did not reach /init within {timeout:g} s (qemu killed): "
                f"the host, not the image ({cause_of(exc.tail)})"
            ) from None
        return LoadTestResult(
            False,
            f"guest timed out after {timeout:g} s (qemu killed)",
            release,
            seconds,
            size,
            tuple(exc.tail[-12:]),
            provided,
            boot=boot,
        )
    except CommandError as exc:
        raise HostError(f"qemu could not run: {exc}") from exc
    finally:
        initrd.unlink(missing_ok=True)
        shutil.rmtree(work / boot_chain.ESP, ignore_errors=True)
    seconds = time.monotonic() - started
    if done.returncode != 0 and not reached_init:
        # The guest powers off when done (qemu exits 0): qemu itself failed to run it.
        raise HostError(f"qemu could not run: exit {done.returncode}: {cause_of(done.tail)}")
    passed, reason, evidence = evaluate(lines, release, secure_boot is not None, trust)
    return LoadTestResult(passed, reason, release, seconds, size, evidence, provided, boot=boot)


def retest_image(
    podman: Podman,
    store: KernelModuleStore,
    registry: RegistryClient,
    config: Config,
    target: BuildTarget,
    image: str,
    work: Path,
    log: TextIO,
    workers: WorkerTools,
    timeout: float = DEFAULT_TIMEOUT,
    secure_boot: SecureBootSetup | None = None,
    removal_label: str = "",
) -> LoadTestResult:
    """Pull an image (and its target's toolkit) and load-test it again, as `build` did: the
    in-tree modules the worker removes first are those its `removal_label` names."""

    def sink(line: str) -> None:
        log.write(line + "\n")

    try:
        podman.ensure(image, config.tls_verify(image), sink)
        toolkit = registry.resolve(target.toolkit_image, target.arch).pinned
        podman.ensure(toolkit, config.tls_verify(toolkit), sink)
        work.mkdir(parents=True, exist_ok=True)
        podman.export_rootfs(image, work / "rootfs.tar", sink)
        named = podman.image_label(image, removal_label) if removal_label else None
        outcome = run_load_test(
            podman,
            store,
            workers,
            work / "rootfs.tar",
            toolkit,
            target,
            work,
            timeout=timeout,
            on_line=sink,
            secure_boot=secure_boot,
            removes=tuple(n for n in (named or "").split(",") if n),
        )
    except HabanaError as exc:
        log.write(f"FAILED: {exc}\n")
        refused = Failure.of("load test", exc, image)
        return LoadTestResult(
            False, str(exc), "", 0.0, 0, image=image, log=log.name, failure=refused
        )
    failed = None if outcome.passed else Failure("load test", outcome.reason, image)
    return replace(
        outcome, seconds=round(outcome.seconds, 1), image=image, log=log.name, failure=failed
    )
