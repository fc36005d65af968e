"""Load test: boot the exact target kernel under qemu with the image itself as the initramfs,
load the driver with the image's own modprobe (as KMM does) and read the verdict off the console.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from habana_tasks import initramfs
from habana_tasks.config import BuildTarget, Config
from habana_tasks.errors import CommandError, CommandTimeout, HabanaError
from habana_tasks.podman import Podman
from habana_tasks.process import LineSink
from habana_tasks.registry import RegistryClient

MARK = "SMOKE:"
DEFAULT_TIMEOUT = 120.0
KERNEL_PATHS = ("/lib/modules/{release}/vmlinuz", "/boot/vmlinuz-{release}")
# Kernel log lines that mean a module did not load as built.
LOAD_FAILURES = re.compile(
    r"disagrees about version of symbol|Unknown symbol|version magic|Invalid module format|"
    r"invalid module|decompression failed|Failed to decompress|module_layout"
)

INIT = """#!/bin/sh
# Loads the driver as KMM's worker does (modprobe -d /opt), reports, powers off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
release="$(uname -r)"
echo "SMOKE: booted $release"
status=PASS
for m in @MODULES@; do
  if modprobe -v -d /opt "$m"; then echo "SMOKE: modprobe $m ok"; else
    echo "SMOKE: FAIL modprobe -d /opt $m failed"; status=FAIL; continue; fi
  if [ -d "/sys/module/$m" ]; then echo "SMOKE: loaded $m"; else
    echo "SMOKE: FAIL $m is not in /sys/module"; status=FAIL; fi
  magic="$(modinfo -b /opt -k "$release" -F vermagic "$m")"
  case "$magic" in
    "$release "*) echo "SMOKE: vermagic $m ok" ;;
    *) echo "SMOKE: FAIL vermagic of $m is '$magic', booted $release"; status=FAIL ;;
  esac
done
if [ -d /sys/bus/pci/drivers/@PCI_DRIVER@ ]; then echo "SMOKE: pci driver @PCI_DRIVER@ registered"
else echo "SMOKE: FAIL pci driver @PCI_DRIVER@ not registered"; status=FAIL; fi
if command -v dmesg >/dev/null; then dmesg | tail -n 40 | sed 's/^/SMOKE: dmesg /'; fi
echo "SMOKE: $status"
echo o > /proc/sysrq-trigger
sleep 10
"""


@dataclass(frozen=True)
class LoadTestResult:
    passed: bool
    reason: str
    kernel: str
    seconds: float
    initramfs_bytes: int
    evidence: tuple[str, ...] = ()


def init_script(modules: Sequence[str]) -> bytes:
    return INIT.replace("@MODULES@", " ".join(modules)).replace("@PCI_DRIVER@", modules[0]).encode()


def qemu_argv(kernel: Path, initrd: Path, memory_mb: int = 1024, accel: str = "tcg") -> list[str]:
    """TCG unless asked: a /dev/kvm that exists can still be unusable (nested virtualisation)."""
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        str(memory_mb),
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 panic=-1 quiet",
    ]


def evaluate(lines: Sequence[str], release: str) -> tuple[bool, str, tuple[str, ...]]:
    """The verdict from the guest console: pure, so every failure shape is unit-tested."""
    clean = [line.replace("\r", "").rstrip() for line in lines]
    marks = [line.split(MARK, 1)[1].strip() for line in clean if MARK in line]
    failures = [line for line in clean if LOAD_FAILURES.search(line)]
    evidence = tuple([*failures, *(m for m in marks if m.startswith("FAIL"))][:12])
    booted = next((m.split(" ", 1)[1] for m in marks if m.startswith("booted ")), None)
    if booted is None:
        tail = tuple(line for line in clean if line.strip())[-12:]
        return False, "the guest never reached /init (see console tail)", tail
    if booted != release:
        return False, f"booted kernel {booted!r}, expected {release!r}", evidence
    fails = [m[5:] for m in marks if m.startswith("FAIL ")]
    if fails:
        return False, fails[0], evidence
    if failures:
        return False, f"kernel log: {failures[0].strip()}", evidence
    if "PASS" not in marks:
        return False, "the guest stopped before its verdict", evidence
    return True, "loaded", evidence


def extract_kernel(podman: Podman, toolkit_image: str, release: str, dest: Path) -> Path:
    """The target kernel from its toolkit image (RHEL driver-toolkit or Debian layout)."""
    tried = [p.format(release=release) for p in KERNEL_PATHS]
    if podman.copy_from_image(toolkit_image, tried, dest) is None:
        raise HabanaError(f"{toolkit_image}: no kernel image at {' or '.join(tried)}")
    return dest


def run_load_test(
    podman: Podman,
    rootfs_tar: Path,
    toolkit_image: str,
    release: str,
    modules: Sequence[str],
    work: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_line: LineSink | None = None,
) -> LoadTestResult:
    """An exported image booted in the kernel its toolkit image carries."""
    work.mkdir(parents=True, exist_ok=True)
    kernel = extract_kernel(podman, toolkit_image, release, work / "vmlinuz")
    return boot_and_load(
        podman, rootfs_tar, kernel, release, modules, work, timeout=timeout, on_line=on_line
    )


def boot_and_load(
    podman: Podman,
    rootfs_tar: Path,
    kernel: Path,
    release: str,
    modules: Sequence[str],
    work: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_line: LineSink | None = None,
) -> LoadTestResult:
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.cpio"
    size = initramfs.rootfs_to_cpio(rootfs_tar, initrd, {"init": (0o755, init_script(modules))})
    accel = os.environ.get("HABANA_QEMU_ACCEL", "tcg")
    started = time.monotonic()
    try:
        done = podman.runner.run(
            qemu_argv(kernel, initrd, accel=accel),
            timeout=timeout,
            keep_output=True,
            check=False,
            on_line=on_line,
        )
        lines: Sequence[str] = done.output
    except CommandTimeout as exc:
        seconds = time.monotonic() - started
        return LoadTestResult(
            False,
            f"guest timed out after {timeout:g} s (qemu killed)",
            release,
            seconds,
            size,
            tuple(exc.tail[-12:]),
        )
    except CommandError as exc:
        raise HabanaError(f"qemu could not run: {exc}") from exc
    finally:
        initrd.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    passed, reason, evidence = evaluate(lines, release)
    return LoadTestResult(passed, reason, release, seconds, size, evidence)


@dataclass(frozen=True)
class LoadTestReport:
    """One published (or local) image's load test, as the table and report.json show it."""

    image: str
    passed: bool
    reason: str
    log: str
    kernel: str | None = None
    seconds: float | None = None
    initramfs_bytes: int | None = None
    evidence: tuple[str, ...] = ()


def retest_image(
    podman: Podman,
    registry: RegistryClient,
    config: Config,
    target: BuildTarget,
    image: str,
    work: Path,
    log: TextIO,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoadTestReport:
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
            work / "rootfs.tar",
            toolkit,
            target.kernel,
            target.modules,
            work,
            timeout=timeout,
            on_line=sink,
        )
    except HabanaError as exc:
        log.write(f"FAILED: {exc}\n")
        return LoadTestReport(image, False, str(exc), log.name)
    return LoadTestReport(
        image,
        outcome.passed,
        outcome.reason,
        log.name,
        outcome.kernel,
        round(outcome.seconds, 1),
        outcome.initramfs_bytes,
        outcome.evidence,
    )
