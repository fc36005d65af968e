"""Long-running services the local upstream keeps up between commands (its registry and
package server): started detached from the run that starts them, stopped by a later one."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def spawn_service(argv: Sequence[str], log_path: Path) -> int:
    """Start a long-running service detached from this run; returns its pid (its group id too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def stop_service(pid: int) -> bool:
    """Stop a service started by spawn_service; False when it was not running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def service_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
