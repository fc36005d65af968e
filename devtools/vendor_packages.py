"""The local upstream's vendor packages, made from Debian's kernel sources the way the vendor
packages its driver: `habanalabs-<version>.el8.noarch.rpm` (DKMS-style source, the upstream
habanalabs driver and the habana_example_ib stand-in) and a placeholder firmware package; each
made once per content, byte for byte the same wherever it is made.

Two generations of the driver's source: Debian 12's linux-source-6.1 (`drivers/misc/habanalabs`)
for driver versions 6.1.*, and Debian 13's linux-source-6.12 (`drivers/accel/habanalabs`, which
builds against the kernel's own accel/DRM core) for 6.12.*, whose package says in its dkms.conf
that it builds for Debian 13's kernels only (BUILD_EXCLUSIVE_KERNEL)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from habana_tasks.build.driver_package import sha256_file
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import ProcessRunner

if TYPE_CHECKING:
    from devtools.local_upstream import Upstream

LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
DRIVER_SUBDIR = "drivers/misc/habanalabs"
UAPI_HEADER = "include/uapi/misc/habanalabs.h"


@dataclass(frozen=True)
class SourceGeneration:
    """Where one generation of the kernel's source keeps the driver, and how it is built."""

    tarball: Path
    top: str  # the tarball's top folder
    driver: str  # the driver's folder in it
    uapi: str  # its user API header, which the driver includes by a path under include/
    config: str  # the Kconfig symbol a module build sets
    exclusive: str  # the kernels its package builds for (dkms.conf), "" for any


GENERATION_6_1 = SourceGeneration(
    LINUX_SOURCE, "linux-source-6.1", DRIVER_SUBDIR, UAPI_HEADER, "CONFIG_HABANA_AI", ""
)
# Debian 13's linux-source-6.12, unpacked from its package by scripts/install-deps.
GENERATION_6_12 = SourceGeneration(
    Path(__file__).resolve().parent.parent
    / ".cache/tools/linux-source-6.12/usr/src/linux-source-6.12.tar.xz",
    "linux-source-6.12",
    "drivers/accel/habanalabs",
    "include/uapi/drm/habanalabs_accel.h",
    "CONFIG_DRM_ACCEL_HABANALABS",
    "^6\\.12\\.[0-9]+\\+deb13-",
)


def generation_of(version: str) -> SourceGeneration:
    """The source a driver version of the example is made from: 6.12.* from Linux 6.12."""
    return GENERATION_6_12 if version.startswith("6.12.") else GENERATION_6_1


# The stand-in for habanalabs_ib: a name no kernel has in tree (tests check the targets').
STANDIN_MODULE = "habana_example_ib"
STANDIN_SOURCE = Path(__file__).parent / "standin"
STANDIN_SUBDIR = f"drivers/infiniband/{STANDIN_MODULE}"
# What the example driver package builds, in load order.
EXAMPLE_MODULES = ("habanalabs", STANDIN_MODULE)
# Every firmware name the example modules declare (`modinfo -F firmware`); the placeholder
# firmware package ships each one, and the image checks prove the list complete.
FIRMWARE_FILES = (
    "habanalabs/gaudi/gaudi-boot-fit.itb",
    f"habanalabs/example/{STANDIN_MODULE}.bin",
)
PAYLOADS = {"gzip": "w9.gzdio", "xz": "w6.xzdio", "zstd": "w19.zstdio"}
# Bumped whenever a recipe of the local upstream changes, so cached artefacts are rebuilt.
RECIPE_VERSION = "2"


def recipe_key(*parts: object) -> str:
    """What a cached artefact of the local upstream is kept under: its recipe and inputs."""
    return hashlib.sha256(json.dumps([RECIPE_VERSION, *map(str, parts)]).encode()).hexdigest()[:16]


def extract_driver_source(
    upstream: Upstream, runner: ProcessRunner, generation: SourceGeneration = GENERATION_6_1
) -> Path:
    """The driver's subtree of a generation's kernel source, extracted once per content."""
    if not generation.tarball.exists():
        raise HabanaError(
            f"{generation.tarball} is missing; scripts/install-deps installs or unpacks it"
        )
    key = recipe_key(sha256_file(generation.tarball))
    target = upstream.artefacts / "source" / key
    if (target / generation.top / generation.driver / "Makefile").exists():
        return target / generation.top
    partial = target.with_suffix(".partial")
    partial.mkdir(parents=True, exist_ok=True)
    members = [f"{generation.top}/{generation.driver}", f"{generation.top}/{generation.uapi}"]
    runner.run(["tar", "-xJf", str(generation.tarball), "-C", str(partial), *members])
    partial.replace(target)
    return target / generation.top


def tree_sha(directory: Path) -> str:
    """A 40-hex digest of a source tree's paths and contents: the stand-in for a git commit."""
    hasher = hashlib.sha1(usedforsecurity=False)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        hasher.update(str(path.relative_to(directory)).encode() + b"\0")
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


VENDOR_MAKEFILE = """\
# Vendor-style entry point, as in the vendor's package: make KVERSION=<uname -r> GIT_SHA=<sha>
KVERSION ?= $(shell uname -r)
GIT_SHA ?= unknown
KDIR ?= /lib/modules/$(KVERSION)/build

all:
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@DRIVER@ @CONFIG@=m modules
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@STANDIN_SUBDIR@ modules
\t@echo "habanalabs built for $(KVERSION) from $(GIT_SHA)"

clean:
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@DRIVER@ clean
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@STANDIN_SUBDIR@ clean
""".replace("@STANDIN_SUBDIR@", STANDIN_SUBDIR)


def vendor_makefile(generation: SourceGeneration) -> str:
    return VENDOR_MAKEFILE.replace("@DRIVER@", generation.driver).replace(
        "@CONFIG@", generation.config
    )


SPEC = """\
Name: habanalabs
Version: %{drv_version}
Release: %{drv_release}.el8
Summary: habanalabs driver source (upstream Linux 6.1 tree, vendor-style DKMS layout)
License: GPLv2
BuildArch: noarch
AutoReqProv: no
%global debug_package %{nil}
%global __os_install_post %{nil}

%description
The upstream habanalabs driver from Debian's linux-source-6.1, packaged the way the vendor
packages its driver: DKMS-style source under /usr/src/habanalabs-<version>/. It also builds
habana_example_ib, an example stand-in for the vendor's habanalabs_ib (not a driver).

%install
mkdir -p %{buildroot}/usr/src
cp -a %{srcdir}/habanalabs-%{drv_full} %{buildroot}/usr/src/

%files
%defattr(-,root,root,-)
/usr/src/habanalabs-%{drv_full}
"""


# The same package, byte for byte, wherever and whenever it is made (as a vendor's release is
# one file): the build time, every file's time and the build host are fixed, so the compile
# cache's key (the package's sha256) is the same in every checkout and for every user.
RPM_EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
REPRODUCIBLE_RPM = {
    "use_source_date_epoch_as_buildtime": "1",
    "clamp_mtime_to_source_date_epoch": "1",
    "_buildhost": "habana-upstream",
}


def dkms_conf(
    version: str, git_sha: str, source: str, generation: SourceGeneration = GENERATION_6_1
) -> str:
    exclusive = f'BUILD_EXCLUSIVE_KERNEL="{generation.exclusive}"\n' if generation.exclusive else ""
    return (
        'PACKAGE_NAME="habanalabs"\n'
        f'PACKAGE_VERSION="{version}"\n'
        f"KMD_LAST_GIT_SHA={git_sha}\n"
        f"# Source: {source}\n"
        f"{exclusive}"
        'BUILT_MODULE_NAME[0]="habanalabs"\n'
        f'BUILT_MODULE_LOCATION[0]="{generation.driver}"\n'
        'DEST_MODULE_LOCATION[0]="/extra"\n'
        f'BUILT_MODULE_NAME[1]="{STANDIN_MODULE}"\n'
        f'BUILT_MODULE_LOCATION[1]="{STANDIN_SUBDIR}"\n'
        'DEST_MODULE_LOCATION[1]="/extra"\n'
        'MAKE[0]="make KVERSION=${kernelver} GIT_SHA=' + git_sha + '"\n'
        'AUTOINSTALL="yes"\n'
    )


def build_driver_rpm(
    upstream: Upstream,
    runner: ProcessRunner,
    version: str,
    *,
    payload: str = "gzip",
    dkms: str | None = None,
    output_dir: Path | None = None,
) -> Path:
    """`habanalabs-<version>.el8.noarch.rpm`, made once per (version, payload, dkms.conf)."""
    if "-" not in version:
        raise HabanaError(f"driver version {version!r}: expected VERSION-RELEASE, e.g. 6.1.0-1")
    generation = generation_of(version)
    source = extract_driver_source(upstream, runner, generation)
    git_sha = tree_sha(source / generation.driver)
    conf = dkms if dkms is not None else dkms_conf(version, git_sha, generation.top, generation)
    out_dir = output_dir or upstream.package_dir
    rpm = out_dir / f"habanalabs-{version}.el8.noarch.rpm"
    standin = {p.name: p.read_bytes() for p in sorted(STANDIN_SOURCE.iterdir()) if p.is_file()}
    recipe = repr((standin, SPEC, REPRODUCIBLE_RPM))  # a new recipe makes the package again
    key = recipe_key(source, version, payload, conf, hashlib.sha256(recipe.encode()).hexdigest())
    stamp = out_dir / f".{rpm.name}.key"
    if rpm.exists() and stamp.exists() and stamp.read_text() == key:
        return rpm
    work = upstream.artefacts / "rpmbuild" / key
    tree = work / "src" / f"habanalabs-{version}"
    runner.run(["rm", "-rf", str(work)])
    for part in (generation.driver, generation.uapi):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        runner.run(["cp", "-a", str(source / part), str(tree / part)])
    (tree / STANDIN_SUBDIR).mkdir(parents=True)
    for name, data in standin.items():
        (tree / STANDIN_SUBDIR / name).write_bytes(data)
    (tree / "Makefile").write_text(vendor_makefile(generation))
    (tree / "dkms.conf").write_text(conf)
    (work / "habanalabs.spec").write_text(SPEC)
    ver, rel = version.rsplit("-", 1)
    defines = {
        "_topdir": str(work / "top"),
        "srcdir": str(work / "src"),
        "drv_version": ver,
        "drv_release": rel,
        "drv_full": version,
        "_binary_payload": PAYLOADS[payload],
        "_rpmfilename": "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
        **REPRODUCIBLE_RPM,
    }
    argv = ["rpmbuild", "-bb", "--quiet"]
    for name, value in defines.items():
        argv += ["--define", f"{name} {value}"]
    runner.run([*argv, str(work / "habanalabs.spec")], env=RPM_EPOCH)
    built = work / "top" / "RPMS" / f"habanalabs-{version}.el8.noarch.rpm"
    out_dir.mkdir(parents=True, exist_ok=True)
    built.replace(rpm)
    stamp.write_text(key)
    runner.run(["rm", "-rf", str(work)])
    return rpm


def build_firmware_rpm(
    upstream: Upstream,
    runner: ProcessRunner,
    version: str,
    arch: str,
    files: Iterable[str] = FIRMWARE_FILES,
    name: str | None = None,
) -> Path:
    """A vendor-style firmware package with placeholder files where the modules request them.

    Upstream Gaudi firmware is not redistributable through Debian; this only proves the layout.
    """
    rpm = upstream.package_dir / (name or f"habanalabs-firmware-{version}.el8.{arch}.rpm")
    wanted = sorted(files)
    stamp = rpm.with_name(f".{rpm.name}.key")
    key = recipe_key(*wanted, REPRODUCIBLE_RPM)
    if rpm.exists() and stamp.exists() and stamp.read_text() == key:
        return rpm
    work = upstream.root / "rpmbuild" / f"firmware-{rpm.name}"
    runner.run(["rm", "-rf", str(work)])
    for file in wanted:
        placeholder = work / "src" / "lib" / "firmware" / file
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        placeholder.write_bytes(b"placeholder firmware for layout tests\n")
    ver, rel = version.rsplit("-", 1)
    spec = (
        f"Name: habanalabs-firmware\nVersion: {ver}\nRelease: {rel}.el8\n"
        "Summary: placeholder firmware layout\nLicense: Proprietary\nAutoReqProv: no\n"
        "%global debug_package %{nil}\n%global __os_install_post %{nil}\n"
        "%description\nPlaceholder.\n%install\nmkdir -p %{buildroot}/lib\n"
        f"cp -a {work / 'src' / 'lib' / 'firmware'} %{{buildroot}}/lib/\n"
        "%files\n/lib/firmware/habanalabs\n"
    )
    (work / "fw.spec").write_text(spec)
    runner.run(
        [
            "rpmbuild",
            "-bb",
            "--quiet",
            "--target",
            arch,
            "--define",
            f"_topdir {work / 'top'}",
            "--define",
            "_rpmfilename %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
            *(
                f
                for name, value in REPRODUCIBLE_RPM.items()
                for f in ("--define", f"{name} {value}")
            ),
            str(work / "fw.spec"),
        ],
        env=RPM_EPOCH,
    )
    upstream.package_dir.mkdir(parents=True, exist_ok=True)
    built = work / "top" / "RPMS" / f"habanalabs-firmware-{version}.el8.{arch}.rpm"
    built.replace(rpm)
    stamp.write_text(key)
    return rpm
