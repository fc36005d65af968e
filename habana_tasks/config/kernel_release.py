"""Kernel release strings (`uname -r`): validation, architecture and RHEL version derivation."""

from __future__ import annotations

import re

# VERSION.PATCHLEVEL[.SUBLEVEL], then a suffix of alphanumeric parts joined by single
# separators ("-372.19.1.el8_6.x86_64", "-56-amd64", "-284.el9.aarch64+64k"): no empty part.
RELEASE_RE = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?[-+][A-Za-z0-9]+([._+~-][A-Za-z0-9]+)*\Z")
MAX_RELEASE = 200
RHEL_RE = re.compile(r"\.el(?P<major>[0-9]+)(?:_(?P<minor>[0-9]+))?(?:\.|\Z)")
KNOWN_ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x")
# What the library builds and load-tests (the load test boots qemu-system-x86_64; Gaudi servers
# are x86_64). Others are named by releases and refused with this reason, never half-supported.
SUPPORTED_ARCHES = ("x86_64",)
UNSUPPORTED = "not supported: images are built and load-tested for x86_64 only"
# RPM-style suffixes first (".x86_64", ".aarch64+64k"), then Debian flavours ("-cloud-arm64").
_RPM_ARCH_RE = re.compile(r"\.(?P<arch>x86_64|aarch64|ppc64le|s390x)(?:\+[a-z0-9]+)?\Z")
_DEBIAN_ARCH_RE = re.compile(r"-(?P<arch>amd64|arm64|ppc64el|s390x)\Z")
_DEBIAN_TO_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "s390x": "s390x"}
# Go/OCI platform names, used to pick a child of a multi-arch image index.
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def is_valid_release(release: str) -> bool:
    return len(release) <= MAX_RELEASE and bool(RELEASE_RE.match(release))


def derive_arch(release: str) -> str | None:
    """The architecture a release names, or None when it names none (then versions.toml must)."""
    if m := _RPM_ARCH_RE.search(release):
        return m.group("arch")
    if m := _DEBIAN_ARCH_RE.search(release):
        return _DEBIAN_TO_ARCH[m.group("arch")]
    return None


def derive_rhel_version(release: str) -> str | None:
    """`4.18.0-372.19.1.el8_6.x86_64` -> `8.6`; `5.14.0-284.el9.x86_64` -> `9`; Debian -> None."""
    m = RHEL_RE.search(release)
    if m is None:
        return None
    return (
        m.group("major") if m.group("minor") is None else f"{m.group('major')}.{m.group('minor')}"
    )


def arch_problem(arch: str, release: str | None = None) -> str | None:
    """Why an architecture cannot be a target's (unknown, not the release's, not supported)."""
    derived = derive_arch(release) if release else None
    if arch not in KNOWN_ARCHES:
        return f"expected one of {', '.join(KNOWN_ARCHES)}"
    if derived is not None and derived != arch:
        return f"release {release!r} is for {derived}"
    if arch not in SUPPORTED_ARCHES:
        return UNSUPPORTED
    return None
