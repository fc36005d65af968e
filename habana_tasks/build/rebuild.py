"""verify-rebuild: the same inputs give the same image, byte for byte, or the difference is named.

A published image is rebuilt from its own inputs (the fingerprint must match), with its own
timestamp (its `created` label) and load-tested claim, without the layer cache and without
pushing: the image goes into a local OCI layout, written by podman exactly as a push writes it
(same compression), whose manifest digest is compared with the published one. On a difference
the config fields and, per layer, the files that differ are named. Module signatures made with
an ECDSA key are not deterministic; a module that differs only in its signature says so.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard

from habana_tasks.build import kernel_index, labels, metadata
from habana_tasks.build.assembly import ImageOptions, build_image
from habana_tasks.build.driver_package import PackageCache
from habana_tasks.build.plan import Action, BuildJob, replacing
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.archive import relative_name
from habana_tasks.core.errors import Failure, HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.verification.signing import Signer, split_signature

STEP = "verify-rebuild"
SHOWN = 8  # files named per layer
FileFacts = tuple[str, int, int, int, int, str, str]  # kind, mode, uid, gid, mtime, sha256, link


@dataclass(frozen=True)
class LayerDiff:
    index: int
    published: str  # the layer's uncompressed digest (diff_id)
    rebuilt: str
    files: tuple[str, ...]  # "path: what differs", at most SHOWN
    more: int = 0


@dataclass(frozen=True)
class RebuildResult:
    tag: str
    image: str
    published: str | None = None  # manifest digests
    rebuilt: str | None = None
    config: tuple[str, ...] = ()  # config fields that differ
    layers: tuple[LayerDiff, ...] = field(default_factory=tuple)
    failure: Failure | None = None

    @property
    def reproduced(self) -> bool:
        return self.failure is None and self.published is not None


def _read_layout(layout: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of the one image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads(_blob(layout, digest))
    return digest, manifest, json.loads(_blob(layout, manifest["config"]["digest"]))


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / digest.replace(":", "/")).read_bytes()


def _uncompressed(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def layer_files(data: bytes) -> dict[str, FileFacts]:
    """Every member of a layer: what a difference can be in (kind, mode, owner, mtime, content)."""
    files: dict[str, FileFacts] = {}
    with tarfile.open(fileobj=io.BytesIO(_uncompressed(data))) as tar:
        for member in tar.getmembers():
            digest = ""
            if member.isfile():
                handle = tar.extractfile(member)
                digest = hashlib.sha256(handle.read() if handle else b"").hexdigest()
            kind = member.type.decode("latin-1")
            files[relative_name(member.name) or "."] = (
                kind,
                member.mode,
                member.uid,
                member.gid,
                int(member.mtime),
                digest,
                member.linkname,
            )
    return files


WHAT = ("type", "mode", "owner", "group", "mtime", "content", "link target")


def file_differences(
    published: Mapping[str, FileFacts],
    rebuilt: Mapping[str, FileFacts],
    unsigned_equal: Mapping[str, bool] | None = None,
) -> list[str]:
    """One line per differing path, sorted; `unsigned_equal` says, per module path, whether the
    two files are equal without their appended signatures."""
    lines = []
    for path in sorted(set(published) | set(rebuilt)):
        old, new = published.get(path), rebuilt.get(path)
        if old is None:
            lines.append(f"/{path}: only in the rebuild")
        elif new is None:
            lines.append(f"/{path}: only in the published image")
        elif old != new:
            what = [name for name, a, b in zip(WHAT, old, new, strict=True) if a != b]
            if what == ["content"] and (unsigned_equal or {}).get(path):
                what = ["module signature only (not deterministic for this key type)"]
            lines.append(f"/{path}: {', '.join(what)}")
    return lines


def _module_contents(data: bytes) -> dict[str, bytes]:
    """Each module file of a layer without its appended signature."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(_uncompressed(data))) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".ko"):
                handle = tar.extractfile(member)
                body = handle.read() if handle else b""
                split = split_signature(body)
                found[relative_name(member.name)] = split[0] if split else body
    return found


def config_differences(published: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> list[str]:
    """The top-level config fields (and labels) that differ, named."""
    names = []
    for key in sorted(set(published) | set(rebuilt)):
        if key == "config":
            old = published.get(key) or {}
            new = rebuilt.get(key) or {}
            old_labels, new_labels = old.get("Labels") or {}, new.get("Labels") or {}
            names += [
                f"label {k}: {old_labels.get(k)!r} -> {new_labels.get(k)!r}"
                for k in sorted(set(old_labels) | set(new_labels))
                if old_labels.get(k) != new_labels.get(k)
            ]
            rest = {k for k in set(old) | set(new) if k != "Labels" and old.get(k) != new.get(k)}
            names += [f"config.{k}" for k in sorted(rest)]
        elif key == "history":
            names += _history_differences(published.get(key) or [], rebuilt.get(key) or [])
        elif key != "rootfs" and published.get(key) != rebuilt.get(key):
            names.append(key)
    return names


def _history_differences(published: list[Any], rebuilt: list[Any]) -> list[str]:
    """The first history entry that differs, field by field (the rest usually follows it)."""
    for index in range(max(len(published), len(rebuilt))):
        old = published[index] if index < len(published) else {}
        new = rebuilt[index] if index < len(rebuilt) else {}
        if old != new:
            fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            return [
                f"history[{index}].{k}: {str(old.get(k))[:80]!r} -> {str(new.get(k))[:80]!r}"
                for k in fields
            ]
    return []


def layer_differences(
    registry: RegistryClient,
    ref: ImageReference,
    published: tuple[dict[str, Any], dict[str, Any]],
    layout: Path,
    rebuilt: tuple[dict[str, Any], dict[str, Any]],
) -> list[LayerDiff]:
    """Per layer whose uncompressed digest differs: the files that differ, named."""
    (old_manifest, old_config), (new_manifest, new_config) = published, rebuilt
    old_ids = old_config.get("rootfs", {}).get("diff_ids", [])
    new_ids = new_config.get("rootfs", {}).get("diff_ids", [])
    diffs = []
    for index in range(max(len(old_ids), len(new_ids))):
        old_id = old_ids[index] if index < len(old_ids) else ""
        new_id = new_ids[index] if index < len(new_ids) else ""
        if old_id == new_id:
            continue
        old_data = (
            registry.get_blob(ref, old_manifest["layers"][index]["digest"]) if old_id else b""
        )
        new_data = _blob(layout, new_manifest["layers"][index]["digest"]) if new_id else b""
        old_files = layer_files(old_data) if old_data else {}
        new_files = layer_files(new_data) if new_data else {}
        old_modules = _module_contents(old_data) if old_data else {}
        new_modules = _module_contents(new_data) if new_data else {}
        same = {p: old_modules[p] == new_modules.get(p) for p in old_modules}
        lines = file_differences(old_files, new_files, same)
        diffs.append(
            LayerDiff(index, old_id, new_id, tuple(lines[:SHOWN]), max(0, len(lines) - SHOWN))
        )
    return diffs


def verify_rebuild(
    config: Config,
    target: BuildTarget,
    *,
    podman: Podman,
    registry: RegistryClient,
    packages: PackageCache,
    dockerfile: Path,
    work: Path,
    signer: Signer | None = None,
    on_line: LineSink | None = None,
) -> RebuildResult:
    """Rebuild one published image from its inputs and compare; never pushes to the registry."""
    result = RebuildResult(target.tag, target.image)
    remote = registry.inspect(target.image, labels.FINGERPRINT)
    if remote.existence is not Existence.PRESENT or remote.digest is None:
        absent = Failure(STEP, "not published: nothing to compare", target.image)
        return replace(result, failure=remote.failure or absent)
    result = replace(result, published=remote.digest)
    inputs = metadata.resolve(
        [target], registry, packages, dockerfile, with_remote=False, signer=signer
    ).inputs[target.tag]
    if isinstance(inputs, Failure):
        return replace(result, failure=inputs)
    changed = labels.changed_inputs(target, inputs, remote.labels)
    if remote.labels.get(labels.FINGERPRINT) != labels.fingerprint(target, inputs):
        text = (
            f"published from other inputs ({', '.join(changed) or 'fingerprint schema'} "
            "changed): a rebuild differs by design; `invoke build` makes it current"
        )
        return replace(result, failure=Failure(STEP, text, target.image))
    epoch = labels.epoch_of(remote.labels.get(labels.OCI + "created", ""))
    if epoch is None:
        created = remote.labels.get(labels.OCI + "created")
        text = f"its created label {created!r} is not one this tool writes"
        return replace(result, failure=Failure(STEP, text, target.image))
    tested = remote.labels.get(labels.LOAD_TESTED, "false")
    job = BuildJob(target, Action.BUILD, "rebuild", inputs, remote.labels[labels.FINGERPRINT])
    try:
        # What the kernel itself ships, read again from the toolkit, as the build read it.
        index = kernel_index.kernel_index(
            registry,
            work.parent / "kernel-index",
            inputs.toolkit.pinned,
            target.kernel,
            target.arch,
        )
        job = replacing(job, index)
        if job.failure is not None:
            return replace(result, failure=job.failure)
        bases = [inputs.base.pinned] if inputs.base else []
        for image in (inputs.toolkit.pinned, *bases):
            podman.ensure(image, config.tls_verify(image), on_line)
        made = ImageOptions(dockerfile, epoch, tested)
        # Never from the compile cache: the published digest is proven from a fresh compile.
        image_id = build_image(podman, config, job, work, made, on_line).image_id
        layout = work / "layout"
        rebuilt = podman.push_to_layout(image_id, layout, work / "layout-digest", on_line)
    except HabanaError as exc:
        return replace(result, failure=Failure.of(STEP, exc, target.image))
    result = replace(result, rebuilt=rebuilt)
    if rebuilt == remote.digest:
        return result
    try:
        ref = ImageReference.parse(target.image)
        manifest = registry.get_manifest(ref)
        published = (manifest.json(), registry.image_config(manifest))
        _, new_manifest, new_config = _read_layout(layout)
        fields = config_differences(published[1], new_config)
        layers = layer_differences(registry, ref, published, layout, (new_manifest, new_config))
    except HabanaError as exc:
        return replace(result, failure=Failure.of(STEP, exc, target.image))
    named = [*fields, *(f"layer {d.index}" for d in layers)] or ["layer compression"]
    text = f"the rebuild {rebuilt} differs from {remote.digest}: {', '.join(named)}"
    differs = Failure(STEP, text, target.image)
    return replace(result, config=tuple(fields), layers=tuple(layers), failure=differs)
