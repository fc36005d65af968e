"""The load test's verdict, read off the guest's console: pure, so every failure shape is
unit-tested. A Secure Boot boot first needs the guest's own proof of Secure Boot and lockdown; a
module refused for its signature is explained (verification/refusal)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from habana_tasks.verification import refusal
from habana_tasks.verification.console import MARK, kernel_words
from habana_tasks.verification.secure_boot import secure_boot_problem

# The init script's line for a module modprobe would not load: the module's name.
FAILED_MODPROBE_RE = re.compile(r"modprobe -d \S+ (\S+) failed")

# Kernel log lines that mean a module did not load as built.
LOAD_FAILURES = re.compile(
    r"disagrees about version of symbol|Unknown symbol|version magic|Invalid module format|"
    r"invalid module|decompression failed|Failed to decompress|module_layout|"
    r"Loading of .* is rejected|module loading is restricted"
)


# The guest's lines that prove which module holds the name: what udev loaded for the card, what
# the worker removed, and the kernel's word that the module now loaded is the image's.
REMOVED = "worker removed the in-tree"
PROOF = ("card ", "node's own ", REMOVED, "image's ")


@dataclass(frozen=True)
class TrustContext:
    """What names a signature refusal's cause: the target kernel's configuration (None: the
    toolkit carries none), the node's kernel arguments, the key id modules are signed for."""

    kernel_config: str | None = None
    kernel_args: tuple[str, ...] = ()
    key_id: str = ""


def evaluate(
    lines: Sequence[str],
    release: str,
    secure_boot: bool = False,
    trust: TrustContext | None = None,
) -> tuple[bool, str, tuple[str, ...]]:
    """(passed, one-line reason, evidence lines) from the guest's console."""
    clean = [line.replace("\r", "").rstrip() for line in lines]
    marks = [line.split(MARK, 1)[1].strip() for line in clean if MARK in line]
    failures = [line for line in clean if LOAD_FAILURES.search(line)]
    proof = tuple(m for m in marks if m.startswith(PROOF))
    evidence = tuple([*failures, *(m for m in marks if m.startswith("FAIL")), *proof][:16])
    booted = next((m.split(" ", 1)[1] for m in marks if m.startswith("booted ")), None)
    if booted is None:
        tail = tuple(line for line in clean if line.strip())[-12:]
        return False, "the guest never reached /init (see console tail)", tail
    if booted != release:
        return False, f"booted kernel {booted!r}, expected {release!r}", evidence
    if secure_boot and (problem := secure_boot_problem(marks)):
        return False, problem, (*evidence, *(m for m in marks if m.startswith(("boot ", "lock"))))
    fails = [m[5:] for m in marks if m.startswith("FAIL ")]
    trust = trust or TrustContext()
    found = refusal.explain(clean, trust.kernel_config, trust.kernel_args, trust.key_id)
    if fails and found is not None:
        module = FAILED_MODPROBE_RE.search(fails[0])
        said = found.evidence[0]  # the kernel's own line, or modprobe's when the kernel had none
        said = said if said.startswith("modprobe") else f"kernel: {said}"
        named = f"{module[1] if module else fails[0]} refused: {found.reason} ({said})"
        return False, named, tuple(dict.fromkeys((*found.evidence, *evidence)))[:16]
    kernel_said = [line for line in failures if MARK not in line or f"{MARK} dmesg" in line]
    if fails and kernel_said and fails[0].startswith("modprobe "):
        # modprobe only says "Invalid argument"; the kernel says which symbol or magic.
        return False, f"{fails[0]} (kernel: {kernel_words(kernel_said[0])})", evidence
    if fails:
        return False, fails[0], evidence
    if failures:
        return False, f"kernel log: {failures[0].strip()}", evidence
    if "PASS" not in marks:
        return False, "the guest stopped before its verdict", evidence
    removed = [m for m in marks if m.startswith(REMOVED)]
    said = removed[0].removeprefix(REMOVED).split(" (", 1)[0] if removed else ""
    return True, f"loaded, replacing the kernel's own{said}" if said else "loaded", proof
