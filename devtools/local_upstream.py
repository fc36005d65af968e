"""A complete local upstream built from Debian packages, so the whole pipeline runs disconnected.

It stands in for the upstream pieces the pipeline talks to, on 127.0.0.1 only:
- an OCI registry (Debian's docker-registry) holding a base image (mmdebstrap, standing in for
  ubi-minimal) and one toolkit image per kernel (headers, compiler, kmod, rpm2cpio, and the
  kernel itself: /boot/vmlinuz and its in-tree modules, as the driver-toolkit's kernel-core and
  kernel-modules packages install them);
- an HTTP server holding a vendor-style `habanalabs-<ver>.el8.noarch.rpm`, built with rpmbuild from
  the upstream habanalabs source in Debian's linux-source-6.1 (the driver the vendor packages),
  plus a second module, `habana_example_ib` (devtools/standin), standing in for the vendor's
  habanalabs_ib: like it, it depends on the target kernel's in-tree ib_core and ib_uverbs.
Everything is cached by content under one ignored folder; a warm `up` takes about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import requests

from devtools import services
from habana_tasks.build.driver_package import sha256_file
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import LineSink, ProcessRunner
from habana_tasks.engine.podman import BuildSpec, Podman

LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
DRIVER_SUBDIR = "drivers/misc/habanalabs"
UAPI_HEADER = "include/uapi/misc/habanalabs.h"
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
BASE_SUITE = "bookworm"
# Bumped whenever the recipes below change, so cached artefacts are rebuilt.
RECIPE_VERSION = "2"
MMDEBSTRAP_ARGV = (
    "mmdebstrap",
    "--variant=minbase",
    "--format=tar",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    BASE_SUITE,
)
TOOLKIT_PACKAGES = ("gcc", "make", "kmod", "binutils", "cpio", "rpm2cpio", "xz-utils")


@dataclass(frozen=True)
class Upstream:
    """Where the local upstream lives and listens."""

    root: Path
    registry_port: int = 5055
    http_port: int = 5056
    # Content-addressed artefacts (rootfs tar, driver source); shareable between upstreams.
    cache: Path | None = None

    @property
    def artefacts(self) -> Path:
        return self.cache or self.root

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def base_image(self) -> str:
        return f"{self.registry}/upstream/debian:{BASE_SUITE}"

    def toolkit_image(self, kernel: str) -> str:
        return f"{self.registry}/upstream/driver-toolkit:{kernel}"

    @property
    def package_dir(self) -> Path:
        return self.root / "packages"

    def package_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{name}"


def _pidfile(upstream: Upstream, service: str) -> Path:
    return upstream.root / "run" / f"{service}.pid"


def _running(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if services.service_alive(pid) else None


def _wait_http(url: str, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = requests.get(url, timeout=1).status_code
        except requests.RequestException as exc:  # not up yet: poll again
            last = type(exc).__name__
        else:
            if status < HTTPStatus.INTERNAL_SERVER_ERROR:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise HabanaError(f"{what} did not answer on {url} within {seconds:g} s ({last})")


def _refuse_taken_port(port: int, service: str) -> None:
    """Another process answering on our port would silently stand in for our service."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise HabanaError(
                f"127.0.0.1:{port} is already in use by a process this upstream did not start; "
                f"stop it before starting the {service}"
            )


def start_registry(upstream: Upstream) -> int:
    """docker-registry on 127.0.0.1, deletes enabled (prune), data under the upstream root."""
    pidfile = _pidfile(upstream, "registry")
    if pid := _running(pidfile):
        return pid
    _refuse_taken_port(upstream.registry_port, "registry")
    config = upstream.root / "registry.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {upstream.root / 'registry-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {upstream.registry}\n"
    )
    pid = services.spawn_service(
        ["docker-registry", "serve", str(config)], upstream.root / "logs" / "registry.log"
    )
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(pid))
    _wait_http(f"http://{upstream.registry}/v2/", "docker-registry")
    return pid


def start_file_server(upstream: Upstream) -> int:
    """A static HTTP server for the vendor-style packages (stands in for the vendor's vault)."""
    pidfile = _pidfile(upstream, "http")
    if pid := _running(pidfile):
        return pid
    _refuse_taken_port(upstream.http_port, "package server")
    upstream.package_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(upstream.http_port)]
    argv += ["--directory", str(upstream.package_dir)]
    pid = services.spawn_service(argv, upstream.root / "logs" / "http.log")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(pid))
    _wait_http(f"http://127.0.0.1:{upstream.http_port}/", "package server")
    return pid


def stop(upstream: Upstream) -> list[str]:
    """Stop the services; returns the names of those that were running."""
    stopped = []
    for service in ("registry", "http"):
        pidfile = _pidfile(upstream, service)
        pid = _running(pidfile)
        if pid is not None and services.stop_service(pid):
            stopped.append(service)
        pidfile.unlink(missing_ok=True)
    return stopped


# Port-independent local names: every upstream shares one base image ID, so the toolkit builds
# hit podman's layer cache whichever registry they are pushed to.
LOCAL_BASE = f"localhost/habana-upstream/debian:{BASE_SUITE}"


def local_toolkit(kernel: str) -> str:
    return f"localhost/habana-upstream/driver-toolkit:{kernel}"


def _push(
    upstream: Upstream, podman: Podman, local: str, remote: str, on_line: LineSink | None
) -> None:
    """Push through an OCI layout kept per image ID: podman compresses each layer once per
    image, not once per fresh registry (a toolkit: ~10 s each time; a copy: ~2 s), and every
    upstream gets the same digests."""
    image_id = podman.runner.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", local], keep_output=True
    ).text.strip()
    layout = upstream.artefacts / "oci" / image_id
    if not (layout / "index.json").exists():
        layout.parent.mkdir(parents=True, exist_ok=True)
        partial = layout.with_name(f"{image_id}.partial")
        podman.push_to_layout(image_id, partial, layout.with_name(f"{image_id}.digest"), on_line)
        partial.replace(layout)
    podman.tag(local, remote)  # as a push leaves it: tests build FROM the remote name
    podman.runner.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"oci:{layout}:image", f"docker://{remote}"],
        on_line=on_line,
    )  # fmt: skip


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([RECIPE_VERSION, *map(str, parts)]).encode()).hexdigest()[:16]


KEY_LABEL = "habana-ai-driver.upstream.key"


def ensure_base_image(upstream: Upstream, podman: Podman, on_line: LineSink | None = None) -> None:
    """mmdebstrap a minimal Debian once; re-import only when the recipe changes (stable digest)."""
    key = _key(*MMDEBSTRAP_ARGV)
    if podman.image_label(LOCAL_BASE, KEY_LABEL) != key:
        tarball = upstream.artefacts / f"base-{key}.tar"
        if not tarball.exists():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            podman.runner.run([*MMDEBSTRAP_ARGV, str(partial)], on_line=on_line)
            partial.replace(tarball)
        podman.import_tarball(tarball, LOCAL_BASE, [f"LABEL {KEY_LABEL}={key}"])
    _push(upstream, podman, LOCAL_BASE, upstream.base_image, on_line)


def toolkit_containerfile(base_image: str, kernel: str) -> str:
    """A driver-toolkit stand-in: headers for exactly one kernel, its vmlinuz and its in-tree
    modules with their depmod indexes (the real toolkit installs kernel-core + kernel-modules)."""
    packages = " ".join((*TOOLKIT_PACKAGES, f"linux-headers-{kernel}"))
    release = json.dumps({"KERNEL_VERSION": kernel, "RT_KERNEL_VERSION": "", "RHEL_VERSION": ""})
    return (
        f"FROM {base_image}\n"
        "RUN apt-get update -q \\\n"
        f" && apt-get install -y -q --no-install-recommends {packages} \\\n"
        f" && cd /tmp && apt-get download -q linux-image-{kernel} \\\n"
        f" && dpkg-deb --fsys-tarfile linux-image-{kernel}_*.deb \\\n"
        "    | tar -x --keep-directory-symlink -C / \\\n"
        f"      ./boot/vmlinuz-{kernel} ./lib/modules/{kernel} \\\n"
        f" && depmod {kernel} && test -s /lib/modules/{kernel}/modules.dep \\\n"
        " && rm -f /tmp/*.deb && rm -rf /var/lib/apt/lists/*\n"
        f"RUN echo '{release}' > /etc/driver-toolkit-release.json\n"
    )


def ensure_toolkit_image(
    upstream: Upstream, podman: Podman, kernel: str, on_line: LineSink | None = None
) -> None:
    directory = upstream.artefacts / "toolkit" / kernel
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Containerfile").write_text(toolkit_containerfile(LOCAL_BASE, kernel))
    local = local_toolkit(kernel)
    spec = BuildSpec(
        context=directory,
        containerfile=directory / "Containerfile",
        iidfile=directory / "image-id",
        tags=(local,),
        # The vendor's toolkit is built by the vendor, from its package archive: this stand-in
        # installs from the Debian mirror. The library's own builds never reach a network.
        network="host",
    )
    podman.build(spec, on_line)
    _push(upstream, podman, local, upstream.toolkit_image(kernel), on_line)


def extract_driver_source(upstream: Upstream, runner: ProcessRunner) -> Path:
    """The habanalabs subtree of linux-source-6.1, extracted once per tarball content."""
    if not LINUX_SOURCE.exists():
        raise HabanaError(
            f"{LINUX_SOURCE} is missing; install it: apt-get install linux-source-6.1"
        )
    key = _key(sha256_file(LINUX_SOURCE))
    target = upstream.artefacts / "source" / key
    if (target / "linux-source-6.1" / DRIVER_SUBDIR / "Makefile").exists():
        return target / "linux-source-6.1"
    partial = target.with_suffix(".partial")
    partial.mkdir(parents=True, exist_ok=True)
    members = [f"linux-source-6.1/{DRIVER_SUBDIR}", f"linux-source-6.1/{UAPI_HEADER}"]
    runner.run(["tar", "-xJf", str(LINUX_SOURCE), "-C", str(partial), *members])
    partial.replace(target)
    return target / "linux-source-6.1"


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
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/drivers/misc/habanalabs CONFIG_HABANA_AI=m modules
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@STANDIN_SUBDIR@ modules
\t@echo "habanalabs built for $(KVERSION) from $(GIT_SHA)"

clean:
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/drivers/misc/habanalabs clean
\t$(MAKE) -C $(KDIR) M=$(CURDIR)/@STANDIN_SUBDIR@ clean
""".replace("@STANDIN_SUBDIR@", STANDIN_SUBDIR)

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


def dkms_conf(version: str, git_sha: str, source: str) -> str:
    return (
        'PACKAGE_NAME="habanalabs"\n'
        f'PACKAGE_VERSION="{version}"\n'
        f"KMD_LAST_GIT_SHA={git_sha}\n"
        f"# Source: {source}\n"
        'BUILT_MODULE_NAME[0]="habanalabs"\n'
        f'BUILT_MODULE_LOCATION[0]="{DRIVER_SUBDIR}"\n'
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
    source = extract_driver_source(upstream, runner)
    git_sha = tree_sha(source / DRIVER_SUBDIR)
    conf = dkms if dkms is not None else dkms_conf(version, git_sha, "linux-source-6.1")
    out_dir = output_dir or upstream.package_dir
    rpm = out_dir / f"habanalabs-{version}.el8.noarch.rpm"
    standin = {p.name: p.read_bytes() for p in sorted(STANDIN_SOURCE.iterdir()) if p.is_file()}
    recipe = repr((standin, SPEC, REPRODUCIBLE_RPM))  # a new recipe makes the package again
    key = _key(source, version, payload, conf, hashlib.sha256(recipe.encode()).hexdigest())
    stamp = out_dir / f".{rpm.name}.key"
    if rpm.exists() and stamp.exists() and stamp.read_text() == key:
        return rpm
    work = upstream.artefacts / "rpmbuild" / key
    tree = work / "src" / f"habanalabs-{version}"
    runner.run(["rm", "-rf", str(work)])
    (tree / "drivers" / "misc").mkdir(parents=True)
    runner.run(["cp", "-a", str(source / DRIVER_SUBDIR), str(tree / "drivers" / "misc")])
    (tree / "include" / "uapi" / "misc").mkdir(parents=True)
    runner.run(["cp", "-a", str(source / UAPI_HEADER), str(tree / "include" / "uapi" / "misc")])
    (tree / STANDIN_SUBDIR).mkdir(parents=True)
    for name, data in standin.items():
        (tree / STANDIN_SUBDIR / name).write_bytes(data)
    (tree / "Makefile").write_text(VENDOR_MAKEFILE)
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
    key = _key(*wanted, REPRODUCIBLE_RPM)
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


def up(
    upstream: Upstream,
    podman: Podman,
    kernels: Iterable[str],
    drivers: Iterable[str],
    on_line: LineSink | None = None,
) -> None:
    """Start the services and make every image and package the example versions file names."""
    start_registry(upstream)
    start_file_server(upstream)
    ensure_base_image(upstream, podman, on_line)
    for kernel in sorted(set(kernels)):
        ensure_toolkit_image(upstream, podman, kernel, on_line)
    for driver in sorted(set(drivers)):
        build_driver_rpm(upstream, podman.runner, driver)


def default_root(project_root: Path) -> Path:
    return Path(os.environ.get("HABANA_UPSTREAM_DIR", project_root / ".cache" / "upstream"))
