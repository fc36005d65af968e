"""The target kernel's configuration, read from its toolkit image before anything is built (the
registry streams the toolkit's layers once; nothing is pulled) and kept by the toolkit's digest:
a signing library uses it to flag, in the plan, kernels that would trust no machine-owner key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from habana_tasks.build.driver_package import atomic_write
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import HabanaError
from habana_tasks.registry.client import RegistryClient

# Where toolkits keep the configuration, most specific first: RHEL's kernel-core, the distribution
# kernel's /boot, RHEL's kernel-devel, Debian's linux-headers.
CONFIG_PATHS = (
    "lib/modules/{release}/config",
    "boot/config-{release}",
    "usr/src/kernels/{release}/.config",
    "usr/src/linux-headers-{release}/.config",
)
NONE_FOUND = ""  # kept for a toolkit that carries no configuration
Read = TypeVar("Read")


def kernel_config(
    registry: RegistryClient, cache: Path, toolkit: str, release: str, arch: str
) -> str | None:
    """The configuration of `release` in the toolkit (pinned by digest); None when the toolkit
    carries none. A registry fault is raised (the caller decides; nothing is kept)."""
    digest = toolkit.rsplit("@", 1)[-1].removeprefix("sha256:")
    kept = cache / "kernel-configs" / f"{digest}-{release}"
    if kept.is_file():
        return kept.read_text("utf-8", "replace") or None
    paths = [p.format(release=release) for p in CONFIG_PATHS]
    found = registry.read_first(toolkit, paths, arch)
    text = found[1].decode("utf-8", "replace") if found else NONE_FOUND
    atomic_write(kept, text.encode())
    return text or None


def kernel_configs(
    registry: RegistryClient, cache: Path, pinned: Sequence[tuple[BuildTarget, str]]
) -> dict[str, str | None]:
    """Each target's kernel configuration (by tag), one read per toolkit digest and release;
    a target whose toolkit cannot be read is left out (its load test still decides)."""
    return per_toolkit(pinned, lambda *key: kernel_config(registry, cache, *key))


def per_toolkit(
    pinned: Sequence[tuple[BuildTarget, str]], read: Callable[[str, str, str], Read]
) -> dict[str, Read]:
    """`read(toolkit, release, arch)` once per distinct key, several at a time, by target tag;
    a key whose read fails (a registry fault) is left out."""
    unique = {(toolkit, t.kernel, t.arch) for t, toolkit in pinned}

    def one(key: tuple[str, str, str]) -> tuple[tuple[str, str, str], Read] | None:
        try:
            return key, read(*key)
        except HabanaError:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(hit for hit in pool.map(one, sorted(unique)) if hit is not None)
    return {
        t.tag: found[(toolkit, t.kernel, t.arch)]
        for t, toolkit in pinned
        if (toolkit, t.kernel, t.arch) in found
    }
