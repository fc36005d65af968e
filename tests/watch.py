"""What runs on the machine while a test's command does: every command line, sampled."""

from __future__ import annotations

import threading

import psutil


def argv_snapshots(stop: threading.Event, seen: list[str]) -> None:
    """Every command line on the machine, every 50 ms, until stop is set."""
    while not stop.wait(0.05):
        for proc in psutil.process_iter(["cmdline"]):
            seen.append(" ".join(proc.info["cmdline"] or ()))  # None: it ended, or is not ours
