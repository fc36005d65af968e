"""The node with the card, as the load test plays it: the devices the image's modules serve, and
which of the node kernel's own modules claim them.

On a node with a Gaudi card, udev loads whatever module of the node's kernel claims the card's
PCI id (its modalias, matched against modules.alias) as soon as the device appears, before KMM's
worker runs. A guest without the card never does, so the load test does it itself: it asks the
node's kmod for each device the image's modules declare, as udev would, then lets the worker do
what KMM does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

from habana_tasks.verification.kernel_modules import parse_aliases

# A PCI modalias (the kernel's file2alias format): each field is hex of its width, or `*`.
PCI_FIELDS = (("v", 8), ("d", 8), ("sv", 8), ("sd", 8), ("bc", 2), ("sc", 2), ("i", 2))
PCI_ALIAS = re.compile(
    "^pci:" + "".join(f"{name}([0-9A-Fa-f]{{{width}}}|\\*)" for name, width in PCI_FIELDS) + "$"
)


def device_modalias(pattern: str) -> str | None:
    """The modalias a device matching this PCI alias pattern presents (each wildcard field
    zero, as a function that is not a subsystem's); None for other buses' patterns."""
    found = PCI_ALIAS.match(pattern)
    if found is None:
        return None
    values = (
        v if v != "*" else "0" * w for v, (_, w) in zip(found.groups(), PCI_FIELDS, strict=True)
    )
    return "pci:" + "".join(
        f"{name}{value}" for (name, _), value in zip(PCI_FIELDS, values, strict=True)
    )


def card_devices(image_alias_text: str, modules: Iterable[str]) -> tuple[str, ...]:
    """The devices the image's modules serve (from its modules.alias), as modaliases."""
    wanted = set(modules)
    found = (device_modalias(p) for p, m in parse_aliases(image_alias_text) if m in wanted)
    return tuple(sorted({d for d in found if d is not None}))


def claimants(aliases: Sequence[tuple[str, str]], devices: Iterable[str]) -> tuple[str, ...]:
    """The kernel's modules whose aliases match any of the devices: what udev loads."""
    seen = tuple(devices)
    return tuple(sorted({m for p, m in aliases if any(fnmatchcase(d, p) for d in seen)}))


def closure(depends: Mapping[str, tuple[str, ...]], paths: Iterable[str]) -> tuple[str, ...]:
    """The module files and everything they depend on (paths under /lib/modules/<release>)."""
    found: set[str] = set()
    todo = [p for p in paths if p in depends]
    while todo:
        path = todo.pop()
        if path not in found:
            found.add(path)
            todo.extend(depends.get(path, ()))
    return tuple(sorted(found))
