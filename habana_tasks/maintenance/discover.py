"""Kernel discovery: the kernels OpenShift releases ship, read through the registry API only.

release image -> release-manifests/image-references (the driver-toolkit pull spec) ->
toolkit image -> etc/driver-toolkit-release.json (KERNEL_VERSION, RT_KERNEL_VERSION, RHEL_VERSION).
Each is one file read from one layer; no image is pulled.
"""

from __future__ import annotations

import difflib
import json
import re
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Array, Table

from habana_tasks.config import versions_file
from habana_tasks.config.kernel_release import derive_arch
from habana_tasks.config.targets import Config, DiscoverSettings
from habana_tasks.core import local_files
from habana_tasks.core.errors import Failure, HabanaError, UsageError
from habana_tasks.registry.client import RegistryClient

# A [[kernels]] entry right after another line: a blank line goes between.
KERNELS_ENTRY_RE = re.compile(r"([^\n])\n\[\[kernels\]\]")
RELEASE_TAG_RE = re.compile(r"^(?P<version>[0-9]+\.[0-9]+\.[0-9]+)-(?P<arch>[a-z0-9_]+)\Z")
IMAGE_REFERENCES = "release-manifests/image-references"
TOOLKIT_RELEASE = "etc/driver-toolkit-release.json"


@dataclass(frozen=True)
class ReleaseKernel:
    release: str
    arch: str
    kernel: str
    rt_kernel: str | None
    rhel_version: str | None


STEP = "discover"


@dataclass(frozen=True)
class Discovery:
    kernels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kernel -> releases
    problems: tuple[Failure, ...] = ()
    releases_read: int = 0


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def select_releases(
    tags: Iterable[str], minors: Sequence[str], arches: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(version, arch, tag) of every z-stream of the minors, oldest first."""
    chosen = []
    for tag in tags:
        m = RELEASE_TAG_RE.match(tag)
        if not m or m.group("arch") not in arches:
            continue
        version = m.group("version")
        if any(version.startswith(minor + ".") for minor in minors):
            chosen.append((version, m.group("arch"), tag))
    return sorted(chosen, key=lambda item: (version_key(item[0]), item[1]))


def toolkit_reference(image_references: bytes, where: str) -> str | None:
    """The driver-toolkit pull spec from an ImageStream; None when the release has none."""
    try:
        data = json.loads(image_references)
        tags = data["spec"]["tags"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HabanaError(f"{where}: {IMAGE_REFERENCES} is not an ImageStream ({exc})") from exc
    for entry in tags:
        if isinstance(entry, dict) and entry.get("name") == "driver-toolkit":
            name = (entry.get("from") or {}).get("name")
            if isinstance(name, str) and name:
                return name
    return None


def parse_toolkit_release(body: bytes, arch: str, where: str) -> tuple[str, str | None, str | None]:
    try:
        data = json.loads(body)
        kernel = data["KERNEL_VERSION"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HabanaError(f"{where}: {TOOLKIT_RELEASE} has no KERNEL_VERSION ({exc})") from exc
    if not isinstance(kernel, str) or not kernel:
        raise HabanaError(f"{where}: {TOOLKIT_RELEASE}: KERNEL_VERSION = {kernel!r}")
    rt = data.get("RT_KERNEL_VERSION") or None
    if derive_arch(kernel) is None:  # the release as `uname -r` prints it carries the arch
        kernel = f"{kernel}.{arch}"
        rt = f"{rt}.{arch}" if rt and derive_arch(rt) is None else rt
    return kernel, rt, data.get("RHEL_VERSION") or None


def read_release(
    registry: RegistryClient, repository: str, version: str, arch: str, tag: str
) -> ReleaseKernel | Failure:
    """One release's kernel, or the reason it has none (reported, never fatal)."""
    where = f"{version} ({arch})"
    try:
        refs = registry.read_file(f"{repository}:{tag}", IMAGE_REFERENCES, arch)
        if refs is None:
            return Failure(STEP, f"the release image has no {IMAGE_REFERENCES}", where)
        toolkit = toolkit_reference(refs, where)
        if toolkit is None:
            return Failure(STEP, "no driver-toolkit in the release payload", where)
        body = registry.read_file(toolkit, TOOLKIT_RELEASE, arch)
        if body is None:
            return Failure(STEP, f"{toolkit} has no {TOOLKIT_RELEASE}", where)
        kernel, rt, rhel = parse_toolkit_release(body, arch, f"{where} {toolkit}")
    except HabanaError as exc:
        return Failure.of(STEP, exc, where)
    return ReleaseKernel(version, arch, kernel, rt, rhel)


def discover(registry: RegistryClient, settings: DiscoverSettings) -> Discovery:
    tags = registry.list_tags(settings.release_repository)
    releases = select_releases(tags, settings.minors, settings.arches)
    problems = [
        Failure(STEP, f"no release in {settings.release_repository}", f"{minor} ({arch})")
        for minor in settings.minors
        for arch in settings.arches
        if not any(v.startswith(minor + ".") and a == arch for v, a, _ in releases)
    ]
    with ThreadPoolExecutor(16, thread_name_prefix="discover") as pool:
        found = list(
            pool.map(lambda r: read_release(registry, settings.release_repository, *r), releases)
        )
    kernels: dict[str, list[str]] = {}
    for item in found:
        if isinstance(item, Failure):
            problems.append(item)
            continue
        for kernel in (item.kernel, item.rt_kernel if settings.rt else None):
            if kernel:
                kernels.setdefault(kernel, []).append(item.release)
    return Discovery(
        {k: tuple(sorted(set(v), key=version_key)) for k, v in sorted(kernels.items())},
        tuple(problems),
        len(releases),
    )


def update_versions(
    text: str, kernels: Mapping[str, Sequence[str]], drivers: Sequence[str]
) -> tuple[str, list[str], list[str]]:
    """versions.toml with the new kernels appended and OpenShift lists refreshed, comments and
    order kept. Returns (text, added kernels, kernels whose OpenShift list changed)."""
    doc = tomlkit.parse(text)
    if "kernels" not in doc:
        doc.append("kernels", tomlkit.aot())
    entries = doc["kernels"]
    assert isinstance(entries, AoT)
    existing = {str(entry.get("release")): entry for entry in entries}
    added, updated = [], []
    for kernel, releases in kernels.items():
        if kernel in existing:
            entry = existing[kernel]
            before = [str(v) for v in entry.get("openshift", [])]
            merged = sorted(set(before) | set(releases), key=version_key)
            if merged != before:
                entry["openshift"] = _array(merged)
                updated.append(kernel)
            continue
        if not drivers:
            raise HabanaError(
                "new kernels were found but no driver versions are known for them; "
                "set discover.drivers in versions.toml or pass --driver"
            )
        table: Table = tomlkit.table()
        table.add("release", kernel)
        table.add("drivers", _array(list(drivers)))
        table.add("openshift", _array(list(releases)))
        table.comment("added by invoke discover")
        entries.append(table)
        added.append(kernel)
    # Each [[kernels]] entry stands apart, as a person writes them.
    text = KERNELS_ENTRY_RE.sub("\\1\n\n[[kernels]]", tomlkit.dumps(doc))
    return text, added, updated


@dataclass(frozen=True)
class VersionsChange:
    """What discovery changes in a versions file: kernels added, kernels whose OpenShift list
    changed, the unified diff, and whether the file was written."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    diff: str
    written: bool


def apply_discovery(
    path: Path, found: Discovery, drivers: Sequence[str], *, dry_run: bool
) -> VersionsChange:
    """versions.toml updated with what discovery found (comments kept); with dry_run, only the
    diff. The file is re-read here, bounded, so nothing between load and write is lost."""
    text = local_files.read_text(path, local_files.VERSIONS_FILE)
    new_text, added, updated = update_versions(text, found.kernels, drivers)
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(True), new_text.splitlines(True), str(path), str(path) + " (new)"
        )
    )
    written = not dry_run and new_text != text
    if written:
        write_versions(path, new_text)
    return VersionsChange(tuple(added), tuple(updated), diff, written)


def write_versions(path: Path, new_text: str) -> None:
    """Replace versions.toml atomically, and never with a file that does not parse."""
    versions_file.parse(tomllib.loads(new_text), path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)


def _array(values: Sequence[str]) -> Array:
    array = tomlkit.array()
    array.extend(values)
    return array


@dataclass(frozen=True)
class DiscoveryRun:
    """What `discover` looked at, found and changed, and what it took."""

    settings: DiscoverSettings
    found: Discovery
    change: VersionsChange
    requests: int
    seconds: float


def run_discovery(
    config: Config,
    registry: RegistryClient,
    *,
    minors: Sequence[str] = (),
    arches: Sequence[str] = (),
    drivers: Sequence[str] = (),
    release_repository: str | None = None,
    dry_run: bool = False,
) -> DiscoveryRun:
    """The options over the file's discover table; the kernels found added to the file."""
    settings = replace(
        config.discover,
        minors=tuple(minors) or config.discover.minors,
        arches=tuple(arches) or config.discover.arches,
        release_repository=release_repository or config.discover.release_repository,
    )
    if not settings.minors:
        raise UsageError("no OpenShift minors to look at: pass --minor 4.14 or set discover.minors")
    chosen = tuple(drivers) or settings.drivers or (config.targets[-1:][0].driver,)
    started = time.monotonic()
    found = discover(registry, settings)
    change = apply_discovery(config.path, found, chosen, dry_run=dry_run)
    return DiscoveryRun(settings, found, change, registry.requests_sent, time.monotonic() - started)
