"""Image labels: OCI annotations plus our provenance, and the one fingerprint over all build inputs.

Each fingerprint input is also a label of its own, so a stale image says which input changed.
The same map is written as the manifest's annotations, so that deciding whether an image is
current reads its manifest only. Nothing in it is a build-time value: `created` is
SOURCE_DATE_EPOCH (0 when unset, as ko and apko do), so the same inputs give the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from habana_tasks.build.driver_package import BuildExclusive, CachedPackage
from habana_tasks.config.flavours import FLAVOURS
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import UsageError
from habana_tasks.registry.client import ResolvedImage
from habana_tasks.verification.secure_boot import PLAIN, SECURE_BOOT
from habana_tasks.verification.signing import UNSIGNED, Signer

PREFIX = "io.habana-ai-driver."
OCI = "org.opencontainers.image."
FINGERPRINT = PREFIX + "fingerprint"
# The boot that proved the image ("secure-boot" or "plain"), or "false"; "true" from before
# the boot was named means a plain boot.
LOAD_TESTED = PREFIX + "load-tested"
# The kernel's own modules the image replaces, comma-separated: KMM removes them first.
IN_TREE_REPLACED = PREFIX + "kernel.in-tree-replaced"
TAG = PREFIX + "tag"  # in a signature's annotations only (the tag is not in the image)
# When a signature was made (UTC, microseconds: fixed width, so text order is time order), in
# its annotations: which of a pair's signed builds is the newest the library published.
PUBLISHED = PREFIX + "published"
BOOTS = (PLAIN, SECURE_BOOT)
KERNEL = PREFIX + "kernel.release"
DRIVER = PREFIX + "driver.version"
SIGNING = PREFIX + "signing"  # "signed" or "unsigned"
SIGNER = PREFIX + "signing.signer"
# Bump when the meaning of the fingerprint changes, so every image is rebuilt once (4: the
# labels no longer name where the toolkit and base were pulled from).
FINGERPRINT_SCHEMA = "4"
# Image references are fingerprinted by digest only (already an input): the same base or toolkit
# served from a mirror under another name needs no rebuild.
UNFINGERPRINTED_ARGS = ("TOOLKIT_IMAGE", "BASE_IMAGE")
SCRATCH = "scratch"
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"

# Input name (as shown in a "stale" reason) -> the label that records it.
INPUT_LABELS = {
    "base image digest": OCI + "base.digest",
    "toolkit image digest": PREFIX + "toolkit.digest",
    "driver package": PREFIX + "driver.package.sha256",
    "firmware package": PREFIX + "firmware.package.sha256",
    "driver git SHA": OCI + "revision",
    "Dockerfile": PREFIX + "dockerfile.sha256",
    "modules": PREFIX + "modules",
    "image flavour": PREFIX + "image.flavour",
    # The certificate, not the key: a new certificate rebuilds every image.
    "signing certificate": PREFIX + "signing.certificate.sha256",
    # What the nodes boot the kernel with (the load test boots with it too).
    "node kernel arguments": PREFIX + "node.kernel-args",
}


@dataclass(frozen=True)
class TargetInputs:
    """Everything resolved for one target before deciding: digests, packages, git SHA."""

    base: ResolvedImage | None  # None: no [base], the image starts from scratch
    toolkit: ResolvedImage
    package: CachedPackage
    firmware: CachedPackage | None
    git_sha: str
    dockerfile_sha256: str
    signer: Signer | None = None
    # The kernels the package builds for (its dkms.conf): read from the package, whose sha256
    # the fingerprint holds already.
    exclusive: BuildExclusive = field(default_factory=BuildExclusive)
    # The kernel's own modules the image replaces (read from the toolkit before building, so
    # fixed by its digest): KMM must remove them first. Empty for most kernels.
    in_tree_replaced: tuple[str, ...] = ()


def image_tools(target: BuildTarget, inputs: TargetInputs) -> tuple[str, ...]:
    """The tools the build copies from the toolkit: the flavour's, unless a base brings its own."""
    return () if inputs.base else FLAVOURS[target.flavour].tools


def build_args(target: BuildTarget, inputs: TargetInputs) -> dict[str, str]:
    return {
        "TOOLKIT_IMAGE": inputs.toolkit.pinned,
        "BASE_IMAGE": inputs.base.pinned if inputs.base else SCRATCH,
        "IMAGE_TOOLS": " ".join(image_tools(target, inputs)),
        "KERNEL_RELEASE": target.kernel,
        "DRIVER_VERSION": target.driver,
        "DRIVER_GIT_SHA": inputs.git_sha,
        "MODULES": " ".join(target.modules),
        "MODULE_SIGNING": "1" if inputs.signer else "",
    }


def input_values(target: BuildTarget, inputs: TargetInputs) -> dict[str, str]:
    """The fingerprinted inputs, by the names used in reasons. The node's kernel arguments are
    one only when given, so that images made before they could be given stay current."""
    node_args = {"node kernel arguments": " ".join(target.node_kernel_args)}
    return {
        "base image digest": inputs.base.digest if inputs.base else "",
        "toolkit image digest": inputs.toolkit.digest,
        "driver package": inputs.package.sha256,
        "firmware package": inputs.firmware.sha256 if inputs.firmware else "",
        "driver git SHA": inputs.git_sha,
        "Dockerfile": inputs.dockerfile_sha256,
        "modules": ",".join(target.modules),
        "image flavour": target.flavour,
        "signing certificate": inputs.signer.certificate_sha256 if inputs.signer else "",
        **(node_args if target.node_kernel_args else {}),
    }


def fingerprint(target: BuildTarget, inputs: TargetInputs) -> str:
    material = {
        "schema": FINGERPRINT_SCHEMA,
        "inputs": input_values(target, inputs),
        "build_args": {
            k: v for k, v in build_args(target, inputs).items() if k not in UNFINGERPRINTED_ARGS
        },
    }
    return "sha256:" + hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def changed_inputs(
    target: BuildTarget, inputs: TargetInputs, labels: Mapping[str, str]
) -> list[str]:
    """Names of the inputs whose label on the existing image differs from the current value."""
    values = input_values(target, inputs)
    return [
        name
        for name, label in INPUT_LABELS.items()
        if labels.get(label, "") != values.get(name, "")
    ]


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int:
    """The one timestamp of an image (files, history, `created`): SOURCE_DATE_EPOCH or 0."""
    value = (os.environ if environ is None else environ).get(SOURCE_DATE_EPOCH, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise UsageError(
            f"{SOURCE_DATE_EPOCH}={value!r}: expected seconds since 1970 (an integer >= 0)"
        )
    return int(value)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(created: str) -> int | None:
    """The epoch of an RFC 3339 `created` label this tool wrote; None for anything else."""
    try:
        return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def load_test_boot(image_labels: Mapping[str, str]) -> str | None:
    """Which boot proved an image (load-tested label), or None when none did."""
    value = image_labels.get(LOAD_TESTED)
    if value == "true":
        return PLAIN
    return value if value in BOOTS else None


def image_labels(
    config: Config,
    target: BuildTarget,
    inputs: TargetInputs,
    created: str,
    load_tested: str,
) -> dict[str, str]:
    """`load_tested`: the load-tested label's value (the boot the image passes before it is
    pushed, or "false"), written as given so that a rebuild reproduces it."""
    values = input_values(target, inputs)
    labels = {INPUT_LABELS[name]: value for name, value in values.items() if value}
    labels.update(
        {
            OCI + "version": target.driver,
            OCI + "created": created,
            OCI + "title": f"habanalabs {target.driver} for {target.kernel}",
            OCI + "description": (
                f"Precompiled habanalabs driver {target.driver} for kernel {target.kernel}, "
                "laid out for the Kernel Module Management operator"
            ),
            OCI + "licenses": "GPL-2.0-only",
            KERNEL: target.kernel,
            PREFIX + "kernel.arch": target.arch,
            DRIVER: target.driver,
            PREFIX + "driver.package": inputs.package.filename,
            FINGERPRINT: fingerprint(target, inputs),
            LOAD_TESTED: load_tested,
        }
    )
    if inputs.in_tree_replaced:
        labels[IN_TREE_REPLACED] = ",".join(inputs.in_tree_replaced)
    if inputs.signer:
        labels[SIGNING] = "signed"
        labels[SIGNER] = inputs.signer.subject
        labels[PREFIX + "signing.key-id"] = inputs.signer.key_id
    else:
        labels[SIGNING] = UNSIGNED
    # The base by digest only (an input label): an image's bytes never say where an input was
    # pulled from, so a rebuild through a mirror reproduces them.
    if inputs.base and inputs.base.index_digest:
        labels[PREFIX + "base.index-digest"] = inputs.base.index_digest
    if inputs.firmware:
        labels[PREFIX + "firmware.package"] = inputs.firmware.filename
    if config.source:
        labels[OCI + "source"] = config.source
    if config.vendor:
        labels[OCI + "vendor"] = config.vendor
    return labels


def image_annotations(image_labels: Mapping[str, str]) -> dict[str, str]:
    """The manifest's annotations: the labels, and the OCI base annotations always ours. buildah
    writes its own, even for a FROM scratch stage (an earlier stage's digest there); a given
    annotation replaces them, empty when the image has no base."""
    return {OCI + "base.name": "", OCI + "base.digest": "", **image_labels}


def short_digest(digest: str | None) -> str:
    """A digest cut to its algorithm and first 12 hex digits, enough to tell images apart in a
    line, a table or a page; every command prints digests this way ("" for none)."""
    if not digest:
        return ""
    algorithm, _, hex_digits = digest.rpartition(":")
    return f"{algorithm or 'sha256'}:{hex_digits[:12]}"


def in_tree_replaced(image_labels: Mapping[str, str]) -> tuple[str, ...]:
    """The kernel's own modules the image replaces (KMM removes them first), from its label."""
    return tuple(n for n in image_labels.get(IN_TREE_REPLACED, "").split(",") if n)


def pair_identity(target: BuildTarget) -> dict[str, str]:
    """What names the pair an image was built for, as its signature's annotations carry it:
    a signature of one pair's image then cannot pass for another pair's."""
    return {KERNEL: target.kernel, DRIVER: target.driver, TAG: target.tag}


def signature_annotations(target: BuildTarget, now: datetime) -> dict[str, str]:
    """A signature's annotations: the pair, and when it was published."""
    return pair_identity(target) | {
        PUBLISHED: now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    }
