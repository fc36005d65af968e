"""A corpus of vendor-style packages made by rpmbuild, good and broken, read with rpmfile (no rpm
tools at run time) and cross-checked with rpm2cpio: each good one yields its git SHA, each broken
one a one-line error naming the package and what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import local_upstream, vendor_packages
from habana_tasks.build.driver_package import read_driver_source, read_git_sha
from habana_tasks.core.errors import DriverPackageError
from habana_tasks.core.process import ProcessRunner
from tests.conftest import ROOT, RecordProperty, require, require_tools

pytestmark = [pytest.mark.integration, pytest.mark.reliability("driver packages")]

VERSION = "6.1.0-1"
NAME = f"habanalabs-{VERSION}.el8.noarch.rpm"
DKMS = f"./usr/src/habanalabs-{VERSION}/dkms.conf"
NO_SHA = 'PACKAGE_NAME="habanalabs"\n'


@dataclass(frozen=True)
class PackageCase:
    name: str
    make: Callable[[local_upstream.Upstream, Path], Path]
    expected: str  # "sha" for a good package, else the error it must end with


def rpm(payload: str = "gzip", dkms: str | None = None) -> Callable[..., Path]:
    def make(upstream: local_upstream.Upstream, out: Path) -> Path:
        return vendor_packages.build_driver_rpm(
            upstream, ProcessRunner(), VERSION, payload=payload, dkms=dkms, output_dir=out
        )

    return make


def bytes_of(content: bytes | Callable[[bytes], bytes]) -> Callable[..., Path]:
    def make(upstream: local_upstream.Upstream, out: Path) -> Path:
        good = rpm()(upstream, out / "good")
        path = out / NAME
        path.write_bytes(content(good.read_bytes()) if callable(content) else content)
        return path

    return make


CASES = [
    PackageCase("gzip-payload", rpm("gzip"), "sha"),
    PackageCase("xz-payload", rpm("xz"), "sha"),
    PackageCase("zstd-payload", rpm("zstd"), "sha"),
    PackageCase("quoted-sha", rpm(dkms='KMD_LAST_GIT_SHA="abcdef1234567"\n'), "sha"),
    PackageCase("no-sha-line", rpm(dkms=NO_SHA), "no KMD_LAST_GIT_SHA= line"),
    PackageCase(
        "two-sha-lines",
        rpm(dkms="KMD_LAST_GIT_SHA=abcdef1\nKMD_LAST_GIT_SHA=1234567\n"),
        "2 KMD_LAST_GIT_SHA= lines (abcdef1, 1234567); expected one",
    ),
    PackageCase(
        "sha-not-hex",
        rpm(dkms="KMD_LAST_GIT_SHA=not-a-sha\n"),
        "KMD_LAST_GIT_SHA='not-a-sha'; expected 7-40 lowercase hex digits",
    ),
    PackageCase(
        "sha-uppercase",
        rpm(dkms="KMD_LAST_GIT_SHA=ABCDEF1\n"),
        "KMD_LAST_GIT_SHA='ABCDEF1'; expected 7-40 lowercase hex digits",
    ),
    PackageCase(
        "sha-too-short",
        rpm(dkms="KMD_LAST_GIT_SHA=abc12\n"),
        "KMD_LAST_GIT_SHA='abc12'; expected 7-40 lowercase hex digits",
    ),
    PackageCase("truncated", bytes_of(lambda good: good[: len(good) // 2]), "not a readable RPM"),
    PackageCase(
        "payload-corrupted",
        bytes_of(lambda good: good[:-4000] + b"\0" * 4000),
        "not a readable RPM",
    ),
    PackageCase("empty-file", bytes_of(b""), "not a readable RPM"),
    PackageCase(
        "html-error-page",
        bytes_of(b"<html><body>Access denied</body></html>\n"),
        "not a readable RPM",
    ),
    PackageCase("garbage", bytes_of(bytes(range(256)) * 64), "not a readable RPM"),
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> local_upstream.Upstream:
    require_tools("rpmbuild", "rpm2cpio", "cpio", "tar", "xz")
    require(vendor_packages.LINUX_SOURCE.exists(), str(vendor_packages.LINUX_SOURCE))
    root = tmp_path_factory.mktemp("upstream")
    return local_upstream.Upstream(root, cache=ROOT / ".cache" / "upstream")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_package_yields_its_sha_or_one_clear_error(
    case: PackageCase,
    upstream: local_upstream.Upstream,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    package = case.make(upstream, tmp_path)
    if case.expected == "sha":
        record_property("outcome", "read")
        sha = read_git_sha(package, VERSION)
        # Cross-check with the rpm tools themselves: the same dkms.conf, the same value.
        done = ProcessRunner().run(
            ["sh", "-c", f"rpm2cpio {package} | cpio -i --quiet --to-stdout {DKMS}"],
            keep_output=True,
        )
        assert any(line.endswith(sha) or line.endswith(f'{sha}"') for line in done.output)
        return
    record_property("outcome", "refused")
    with pytest.raises(DriverPackageError) as info:
        read_git_sha(package, VERSION)
    message = str(info.value)
    assert message.startswith(f"{package.name}: "), message
    assert case.expected in message and "\n" not in message


def test_a_package_of_another_version_names_what_it_holds(
    upstream: local_upstream.Upstream, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("outcome", "refused")
    package = rpm()(upstream, tmp_path)
    with pytest.raises(DriverPackageError) as info:
        read_git_sha(package, "9.9.9-1")
    assert str(info.value) == (
        f"{NAME}: no ./usr/src/habanalabs-9.9.9-1/dkms.conf in the package; "
        f"it has usr/src/habanalabs-{VERSION}/dkms.conf"
    )


def test_a_real_packages_kernel_restriction_is_read_from_its_dkms_conf(
    upstream: local_upstream.Upstream, tmp_path: Path
) -> None:
    """A vendor-style RPM whose dkms.conf restricts its kernels, made by rpmbuild: the rule
    read through the package reader is the one the rpm tools show, and it refuses a Debian 12
    kernel while it allows a Debian 13 one."""
    conf = vendor_packages.dkms_conf(VERSION, "abcdef1", "test") + (
        'BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-"\nBUILD_EXCLUSIVE_ARCH="x86_64"\n'
    )
    package = vendor_packages.build_driver_rpm(
        upstream, ProcessRunner(), VERSION, dkms=conf, output_dir=tmp_path
    )
    source = read_driver_source(package, VERSION)
    assert source.git_sha == "abcdef1"
    shown = (
        ProcessRunner()
        .run(
            ["sh", "-c", f"rpm2cpio {package} | cpio -i --quiet --to-stdout {DKMS}"],
            keep_output=True,
        )
        .output
    )
    assert 'BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-"' in shown
    assert source.exclusive.refusal("6.12.117+deb13-amd64", "x86_64") is None
    assert source.exclusive.refusal("6.1.0-55-amd64", "x86_64")
