"""The small tables of versions.toml, each parsed by its own helper: [library], [image],
[signing], [cosign], [cache] and [discover]. Problems are collected, never raised, so that a
file's every problem is reported at once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habana_tasks.config import fields, flavours, kernel_release, openshift
from habana_tasks.config.image_reference import ImageReference, registry_host_problem
from habana_tasks.config.targets import (
    CacheSettings,
    DiscoverSettings,
    ImageSigning,
    SigningFiles,
)

DRIVER_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)+(-[0-9A-Za-z.]+)?\Z")
DRIVER_EXPECTED = "expected a driver version like 1.6.0-439"
# The signing key's path, for CI runners that write the key from a secret store to a file.
SIGNING_KEY_ENV = "HABANA_SIGNING_KEY"
SIGNING_KEYS = ("certificate", "key")
COSIGN_KEYS = ("key", "public_key", "password_file")
# A key cosign reads from a key management service: passed to cosign untouched.
KMS_RE = re.compile(r"^(awskms|gcpkms|azurekms|hashivault|k8s|gitlab)://[!-~]+\Z|^pkcs11:[!-~]+\Z")
COSIGN_KEY_EXPECTED = (
    "expected the path of a cosign private key (cosign.key) or a KMS URI cosign understands "
    "(awskms://, gcpkms://, azurekms://, hashivault://, k8s://, gitlab://, pkcs11:)"
)
DISCOVER_KEYS = ("release_repository", "minors", "arches", "drivers", "rt")
CACHE_KEYS = ("max_size",)
SIZE_RE = re.compile(r"^([0-9]{1,15})\s*([KMGT]?)(i?B)?\Z", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MAX_CACHE_SIZE = 1024**5  # 1 PiB: anything larger is a typo
SIZE_EXPECTED = 'expected a size like "10G", "500M" or a number of bytes (0 keeps nothing)'


def signing(
    problems: fields.Problems, data: Mapping[str, Any], path: Path, environ: Mapping[str, str]
) -> SigningFiles | None:
    """[signing]: both paths, relative to the versions file; the key may come from the
    environment instead (HABANA_SIGNING_KEY), so that it never needs to sit beside the file."""
    if "signing" not in data and not environ.get(SIGNING_KEY_ENV):
        return None
    table = fields.table(problems, data, "signing")
    fields.check_keys(problems, table, "signing", SIGNING_KEYS)
    certificate = fields.text(problems, table, "signing.certificate", required=True)
    key = environ.get(SIGNING_KEY_ENV) or fields.text(problems, table, "signing.key")
    if "key" not in table and not environ.get(SIGNING_KEY_ENV):
        problems.missing(
            "signing.key", f"expected the path of the PEM private key (or set {SIGNING_KEY_ENV})"
        )
    if not certificate or not key:
        return None
    base = path.parent
    return SigningFiles(base / Path(certificate).expanduser(), base / Path(key).expanduser())


def flavour(problems: fields.Problems, table: Mapping[str, Any]) -> str:
    """[image] flavour: what the image carries besides the driver (see config.flavours)."""
    name = fields.text(problems, table, "image.flavour") or flavours.DEFAULT
    if name not in flavours.FLAVOURS:
        problems.add("image.flavour", name, flavours.EXPECTED)
        return flavours.DEFAULT
    return name


@dataclass(frozen=True)
class Library:
    repository: str | None
    source: str
    vendor: str
    insecure: tuple[str, ...]


def library(problems: fields.Problems, table: Mapping[str, Any]) -> Library:
    repository = fields.text(problems, table, "library.repository", required=True)
    if repository:
        try:
            ref = ImageReference.parse(repository)
            if ref.tag or ref.digest:
                problems.add("library.repository", repository, "expected a repository without tag")
        except ValueError as exc:
            problems.add("library.repository", repository, str(exc))
    insecure = fields.string_list(problems, table, "library.insecure_registries") or ()
    for host in insecure:
        if why := registry_host_problem(host):
            problems.add("library.insecure_registries", host, why)
    source = fields.text(problems, table, "library.source") or ""
    vendor = fields.text(problems, table, "library.vendor") or ""
    return Library(repository, source, vendor, insecure)


def cache_settings(problems: fields.Problems, table: Mapping[str, Any]) -> CacheSettings:
    """[cache] max_size: bytes, or a number with K, M, G or T (powers of 1024)."""
    fields.check_keys(problems, table, "cache", CACHE_KEYS)
    value = table.get("max_size")
    if value is None:
        return CacheSettings()
    size = parse_size(value)
    if size is None:
        problems.add("cache.max_size", value, SIZE_EXPECTED)
        return CacheSettings()
    return CacheSettings(size)


def parse_size(value: object) -> int | None:
    """A size in bytes from an integer or a text like "10G"; None when it is not one (or is
    beyond MAX_CACHE_SIZE)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := SIZE_RE.match(value.strip())):
        size = int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
    else:
        return None
    return size if 0 <= size <= MAX_CACHE_SIZE else None


def discover_settings(problems: fields.Problems, table: Mapping[str, Any]) -> DiscoverSettings:
    fields.check_keys(problems, table, "discover", DISCOVER_KEYS)
    defaults = DiscoverSettings()
    repository = fields.text(problems, table, "discover.release_repository")
    if repository:
        try:
            ImageReference.parse(repository)
        except ValueError as exc:
            problems.add("discover.release_repository", repository, str(exc))
    minors = fields.string_list(problems, table, "discover.minors") or ()
    for minor in minors:
        if not openshift.OPENSHIFT_MINOR_RE.match(minor):
            problems.add("discover.minors", minor, f"expected {openshift.MINOR_EXPECTED}")
    arches = fields.string_list(problems, table, "discover.arches") or defaults.arches
    for arch in arches:
        if why := kernel_release.arch_problem(arch):
            problems.add("discover.arches", arch, why)
    drivers = fields.string_list(problems, table, "discover.drivers") or ()
    for version in drivers:
        if not DRIVER_VERSION_RE.match(version):
            problems.add("discover.drivers", version, DRIVER_EXPECTED)
    rt = table.get("rt", False)
    if not isinstance(rt, bool):
        problems.add("discover.rt", rt, "expected true or false")
        rt = False
    return DiscoverSettings(repository or defaults.release_repository, minors, arches, drivers, rt)


def image_signing(
    problems: fields.Problems, table: Mapping[str, Any], path: Path
) -> ImageSigning | None:
    """[cosign]: the image-signing key, its public key and the password's file; paths are
    relative to the versions file. A KMS URI is cosign's to read, and has no password file."""
    if not table:
        return None
    fields.check_keys(problems, table, "cosign", COSIGN_KEYS)
    key = fields.text(problems, table, "cosign.key", required=True)
    public = fields.text(problems, table, "cosign.public_key", required=True)
    password_file = fields.text(problems, table, "cosign.password_file")
    if key is None or public is None:
        return None
    kms = KMS_RE.match(key) is not None
    if not kms and ("://" in key or not key.strip() or not key.isprintable()):
        problems.add("cosign.key", key, COSIGN_KEY_EXPECTED)
        return None
    if kms and password_file is not None:
        problems.add("cosign.password_file", password_file, "a KMS key has no password file")
        return None
    base = path.parent
    return ImageSigning(
        key=key,
        key_file=None if kms else base / Path(key).expanduser(),
        public_key=base / Path(public).expanduser(),
        password_file=base / Path(password_file).expanduser() if password_file else None,
    )
