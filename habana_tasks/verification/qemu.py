"""What every load-test guest is on qemu: one CPU, a serial console on stdio and nothing else."""

from __future__ import annotations


def console_machine(memory_mb: int, accel: str) -> list[str]:
    """TCG unless asked: a /dev/kvm that exists can still be unusable (nested virtualisation).
    No display, no monitor, no default devices; the guest's power-off ends qemu."""
    return [
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
    ]
