"""The line of a failed command's output that says why it failed: podman's, make's and the
runtime's own wrapper lines say only that a step failed, so they are passed over."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Lines that say a step failed without saying why: podman's and make's wrappers.
WRAPPER_LINE = re.compile(
    r"^(Error: building at STEP|(\[\d+/\d+\] )?STEP \d+/\d+: |make(\[\d+\])?: \*\*\*|"
    r"error running container|"
    r"subprocess exited with status|time=\S+ level=)"
)
# Lines that say why: compiler and modpost errors, missing files, refusals.
CAUSE_LINE = re.compile(
    r"(?i)(\berror\b|undefined!|\bfatal\b|no such file|not found|permission denied|refused|"
    r"resource busy)"
)


def cause_of(tail: Sequence[str]) -> str:
    """The first line of a failed command's output tail that says why (e.g. `ERROR: modpost:
    "hwmon_device_register_with_info" [...] undefined!`), else its last line."""
    lines = [line.strip() for line in tail if line.strip()]
    for line in lines:
        if CAUSE_LINE.search(line) and not WRAPPER_LINE.match(line):
            return line
    return lines[-1] if lines else "no output"
