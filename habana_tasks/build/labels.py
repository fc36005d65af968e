"""Image labels: OCI annotations plus our provenance, and the one fingerprint over all build inputs.

Each fingerprint input is also a label of its own, so a stale image says which input changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from habana_tasks.build.driver_package import CachedPackage
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.registry.client import ResolvedImage
from habana_tasks.verification.signing import UNSIGNED, Signer

PREFIX = "io.habana-ai-driver."
OCI = "org.opencontainers.image."
FINGERPRINT = PREFIX + "fingerprint"
LOAD_TESTED = PREFIX + "load-tested"
KERNEL = PREFIX + "kernel.release"
DRIVER = PREFIX + "driver.version"
SIGNING = PREFIX + "signing"  # "signed" or "unsigned"
SIGNER = PREFIX + "signing.signer"
# Bump when the meaning of the fingerprint changes, so every image is rebuilt once.
FINGERPRINT_SCHEMA = "3"
# Image references are fingerprinted by digest only (already an input): the same base or toolkit
# served from a mirror under another name needs no rebuild.
UNFINGERPRINTED_ARGS = ("TOOLKIT_IMAGE", "BASE_IMAGE")

# Input name (as shown in a "stale" reason) -> the label that records it.
INPUT_LABELS = {
    "base image digest": OCI + "base.digest",
    "toolkit image digest": PREFIX + "toolkit.digest",
    "driver package": PREFIX + "driver.package.sha256",
    "firmware package": PREFIX + "firmware.package.sha256",
    "driver git SHA": OCI + "revision",
    "Dockerfile": PREFIX + "dockerfile.sha256",
    "modules": PREFIX + "modules",
    # The certificate, not the key: a new certificate rebuilds every image.
    "signing certificate": PREFIX + "signing.certificate.sha256",
}


@dataclass(frozen=True)
class TargetInputs:
    """Everything resolved for one target before deciding: digests, packages, git SHA."""

    base: ResolvedImage
    toolkit: ResolvedImage
    package: CachedPackage
    firmware: CachedPackage | None
    git_sha: str
    dockerfile_sha256: str
    signer: Signer | None = None


def build_args(target: BuildTarget, inputs: TargetInputs) -> dict[str, str]:
    return {
        "TOOLKIT_IMAGE": inputs.toolkit.pinned,
        "BASE_IMAGE": inputs.base.pinned,
        "KERNEL_RELEASE": target.kernel,
        "DRIVER_VERSION": target.driver,
        "DRIVER_GIT_SHA": inputs.git_sha,
        "MODULES": " ".join(target.modules),
        "MODULE_SIGNING": "1" if inputs.signer else "",
    }


def input_values(target: BuildTarget, inputs: TargetInputs) -> dict[str, str]:
    """The fingerprinted inputs, by the names used in reasons."""
    return {
        "base image digest": inputs.base.digest,
        "toolkit image digest": inputs.toolkit.digest,
        "driver package": inputs.package.sha256,
        "firmware package": inputs.firmware.sha256 if inputs.firmware else "",
        "driver git SHA": inputs.git_sha,
        "Dockerfile": inputs.dockerfile_sha256,
        "modules": ",".join(target.modules),
        "signing certificate": inputs.signer.certificate_sha256 if inputs.signer else "",
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
    return [
        name
        for name, value in input_values(target, inputs).items()
        if labels.get(INPUT_LABELS[name], "") != value
    ]


def created_timestamp() -> str:
    """RFC 3339; SOURCE_DATE_EPOCH makes it reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_labels(
    config: Config, target: BuildTarget, inputs: TargetInputs, created: str, load_tested: bool
) -> dict[str, str]:
    values = input_values(target, inputs)
    labels = {INPUT_LABELS[name]: value for name, value in values.items() if value}
    labels.update(
        {
            OCI + "base.name": inputs.base.requested,
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
            PREFIX + "toolkit.name": inputs.toolkit.requested,
            FINGERPRINT: fingerprint(target, inputs),
            LOAD_TESTED: "true" if load_tested else "false",
        }
    )
    if inputs.signer:
        labels[SIGNING] = "signed"
        labels[SIGNER] = inputs.signer.subject
        labels[PREFIX + "signing.key-id"] = inputs.signer.key_id
    else:
        labels[SIGNING] = UNSIGNED
    if inputs.base.index_digest:
        labels[PREFIX + "base.index-digest"] = inputs.base.index_digest
    if inputs.firmware:
        labels[PREFIX + "firmware.package"] = inputs.firmware.filename
    if config.source:
        labels[OCI + "source"] = config.source
    if config.vendor:
        labels[OCI + "vendor"] = config.vendor
    return labels


def short_digest(digest: str | None, length: int = 12) -> str:
    """The first hex digits of a digest, enough to tell images apart in a line or a table."""
    return (digest or "").removeprefix("sha256:")[:length]
