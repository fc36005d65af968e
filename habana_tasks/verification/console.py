"""The guest's console as the load test reads it: the init script marks each line it writes, and
the kernel's own lines are told apart from them."""

from __future__ import annotations

import re

MARK = "LOAD-TEST:"
# What the init script puts before a line it relays (the kernel's log, modprobe's words).
RELAYED = re.compile(rf"^.*?{re.escape(MARK)} (boot |dmesg |modprobe: )?")
KERNEL_TIMESTAMP = re.compile(r"^\[[ \d.]+\]\s*")


def kernel_words(line: str) -> str:
    """A console line without the guest's marks and the kernel's timestamp."""
    return KERNEL_TIMESTAMP.sub("", RELAYED.sub("", line.strip()))
