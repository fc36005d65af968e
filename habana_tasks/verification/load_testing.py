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

from habana_tasks.config import flavours
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
from habana_tasks.verification import initramfs
from habana_tasks.verification import secure_boot as boot_chain
from habana_tasks.verification.console import MARK
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

INIT = """#!/bin/sh
# KMM's two steps: the image's own sh, mkdir and cp copy its tree out (as the image's user);
# the worker's modprobe loads the modules from the copy, in order; then report and power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
release="$(uname -r)"
echo "@MARK@ booted $release"
echo "@MARK@ cmdline $(cat /proc/cmdline)"
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "@MARK@ lockdown $(cat /sys/kernel/security/lockdown 2>/dev/null || echo unavailable)"
boot='efi: EFI v\\|secureboot:\\|locked down\\|MokListRT\\|Loaded X.509 cert'
dmesg | sed -n "/$boot/s/^/@MARK@ boot /p"
status=PASS
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /image/tmp && mount --bind /tmp /image/tmp
dir=/tmp/opt
if out="$(chroot --userspec=@USER@ /image /bin/sh -c '@EXTRACT@' 2>&1)" \
    && [ -d "$dir/lib/modules/$release" ]; then
  echo "@MARK@ image-extractor copied /opt/lib/modules/$release"
else
  echo "$out" | sed 's/^/@MARK@ image-extractor: /'
  why="$(echo "$out" | tail -n 1)"
  echo "@MARK@ FAIL the image's own /bin/sh, mkdir and cp (KMM's image-extractor)" \\
    "did not copy its modules out: ${why:-no /opt/lib/modules/$release in the copy}"
  echo "@MARK@ FAIL"
  echo o > /proc/sysrq-trigger
  sleep 10
fi
for m in @MODULES@; do
  missing=""
  deps="$(sed -n "s|^[^:]*/$m\\.ko[^:]*:||p" "$dir/lib/modules/$release/modules.dep" | head -n 1)"
  for file in $deps; do
    if [ ! -e "$dir/lib/modules/$release/$file" ]; then missing="$missing ${file#host/}"; fi
  done
  if [ -n "$missing" ]; then
    echo "@MARK@ FAIL $m needs in-tree$missing, absent from this node's /lib/modules/$release"
    status=FAIL; continue
  fi
  if out="$(modprobe -v -d "$dir" "$m" 2>&1)"; then echo "@MARK@ modprobe $m ok"; else
    echo "$out" | sed 's/^/@MARK@ modprobe: /'
    why="$(echo "$out" | sed -n '/^modprobe: /p' | tail -n 1)"
    echo "@MARK@ FAIL modprobe -d $dir $m failed: ${why:-$(echo "$out" | tail -n 1)}"
    status=FAIL; continue; fi
  echo "$out" | sed 's/^/@MARK@ modprobe: /'
  if [ -d "/sys/module/$m" ]; then echo "@MARK@ loaded $m"; else
    echo "@MARK@ FAIL $m is not in /sys/module"; status=FAIL; fi
  magic="$(modinfo -b "$dir" -k "$release" -F vermagic "$m")"
  case "$magic" in
    "$release "*) echo "@MARK@ vermagic $m ok" ;;
    *) echo "@MARK@ FAIL vermagic of $m is '$magic', booted $release"; status=FAIL ;;
  esac
done
if [ -d /sys/bus/pci/drivers/@PCI_DRIVER@ ]; then echo "@MARK@ pci driver @PCI_DRIVER@ registered"
else echo "@MARK@ FAIL pci driver @PCI_DRIVER@ not registered"; status=FAIL; fi
if command -v dmesg >/dev/null; then dmesg | tail -n 40 | sed 's/^/@MARK@ dmesg /'; fi
echo "@MARK@ $status"
echo o > /proc/sysrq-trigger
sleep 10
"""


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


def init_script(modules: Sequence[str], release: str, firmware: bool = False) -> bytes:
    return (
        INIT.replace("@MODULES@", " ".join(modules))
        .replace("@PCI_DRIVER@", modules[0])
        .replace("@MARK@", MARK)
        .replace("@USER@", flavours.IMAGE_USER)
        .replace("@EXTRACT@", flavours.extractor_script(release, firmware))
        .encode()
    )


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


def in_tree_closure(rootfs_tar: Path, release: str) -> tuple[str, ...]:
    """The in-tree modules (relative to /lib/modules/<release>) that the image's modules.dep
    reaches through its `host` link, for the image's own modules only."""
    name = f"opt/lib/modules/{release}/modules.dep"
    with tarfile.open(rootfs_tar) as tar:
        try:
            handle = tar.extractfile(name) or tar.extractfile("./" + name)
        except KeyError:
            return ()
        text = handle.read().decode("utf-8", "replace") if handle else ""
    needed: set[str] = set()
    for line in text.splitlines():
        module, sep, deps = line.partition(":")
        if sep and not module.startswith("host/"):
            needed.update(d[len("host/") :] for d in deps.split() if d.startswith("host/"))
    return tuple(sorted(needed))


@dataclass(frozen=True)
class Node:
    """What the guest holds besides the image: the worker's tools (a tar) and the node's in-tree
    modules (path under /lib/modules/<release> -> content)."""

    worker: Path
    modules: Mapping[str, bytes] = field(default_factory=dict)


def node_for(
    store: KernelModuleStore,
    workers: WorkerTools,
    rootfs_tar: Path,
    toolkit_image: str,
    release: str,
    on_line: LineSink | None = None,
) -> Node:
    """The node an image lands on: the toolkit's worker tools and the in-tree modules that the
    image's modules.dep reaches, from the kernel the toolkit carries."""
    files = store.files(toolkit_image, release, in_tree_closure(rootfs_tar, release))
    return Node(
        workers.tar(toolkit_image, on_line),
        {path: file.read_bytes() for path, file in files.items()},
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
) -> LoadTestResult:
    """An exported image booted in the kernel its toolkit image carries, on a node made of that
    toolkit's worker tools and that kernel's in-tree modules the image depends on."""
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
        node_for(store, workers, rootfs_tar, toolkit_image, target.kernel, on_line),
        firmware=target.firmware_url is not None,
        timeout=timeout,
        on_line=on_line,
        secure_boot=secure_boot,
        trust=trust,
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
) -> LoadTestResult:
    """Boot `kernel` on `node` with the image at /image; the node's in-tree module files go
    where KMM's worker sees them. With `enforce_signatures`, the kernel refuses modules not
    signed by a key it trusts. With `secure_boot`, the guest boots as a Secure Boot node does
    (firmware, shim, GRUB) and passes only if it reports Secure Boot on and lockdown."""
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.cpio"
    extra = {"init": (0o755, init_script(modules, release, firmware))}
    for path, data in node.modules.items():
        extra[f"host/lib/modules/{release}/{path}"] = (0o644, data)
    sources = [(node.worker, ""), (rootfs_tar, IMAGE_ROOT)]
    size = initramfs.rootfs_to_cpio(sources, initrd, extra)
    provided = tuple(module_name(p) for p in sorted(node.modules))
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
) -> LoadTestResult:
    """Pull an image (and its target's toolkit) and load-test it again, as `build` did."""

    def sink(line: str) -> None:
        log.write(line + "\n")

    try:
        podman.ensure(image, config.tls_verify(image), sink)
        toolkit = registry.resolve(target.toolkit_image, target.arch).pinned
        podman.ensure(toolkit, config.tls_verify(toolkit), sink)
        work.mkdir(parents=True, exist_ok=True)
        podman.export_rootfs(image, work / "rootfs.tar", sink)
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
