"""A complete local upstream built from Debian packages, so the whole pipeline runs disconnected.

It stands in for the upstream pieces the pipeline talks to, on 127.0.0.1 only:
- an OCI registry (Debian's docker-registry) holding a base image (mmdebstrap, standing in for
  ubi-minimal) and one toolkit image per kernel (headers, compiler, kmod, rpm2cpio, and the
  kernel itself: /boot/vmlinuz and its in-tree modules, as the driver-toolkit's kernel-core and
  kernel-modules packages install them), each made from its own Debian release: Debian 12's
  6.1 kernels on a Debian 12 base (gcc 12), Debian 13's `6.12.<n>+deb13-*` kernels on a Debian 13
  base (gcc 14), as a distribution's driver-toolkit follows its kernel generation;
- an HTTP server holding a vendor-style `habanalabs-<ver>.el8.noarch.rpm`, built with rpmbuild from
  the upstream habanalabs source in Debian's linux-source-6.1 (the driver the vendor packages),
  plus a second module, `habana_example_ib` (devtools/standin), standing in for the vendor's
  habanalabs_ib: like it, it depends on the target kernel's in-tree ib_core and ib_uverbs.
Everything is cached by content under one ignored folder; a warm `up` takes about a second.
"""

from __future__ import annotations

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
from devtools.vendor_packages import build_driver_rpm, recipe_key
from habana_tasks.config import tags
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import BuildSpec, Podman

BASE_SUITE = "bookworm"
# Debian 13's kernels name their release: 6.12.<n>+deb13-<flavour>.
TRIXIE = "trixie"
TRIXIE_RELEASE_MARK = "+deb13-"


def suite_of(kernel: str) -> str:
    """The Debian release a kernel comes from, and so its toolkit's base."""
    return TRIXIE if TRIXIE_RELEASE_MARK in kernel else BASE_SUITE


def mmdebstrap_argv(suite: str) -> tuple[str, ...]:
    return (
        "mmdebstrap",
        "--variant=minbase",
        "--format=tar",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        suite,
    )


MMDEBSTRAP_ARGV = mmdebstrap_argv(BASE_SUITE)
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
        return f"{self.registry}/upstream/driver-toolkit:{tags.tag_text(kernel)}"

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
def local_base(suite: str) -> str:
    return f"localhost/habana-upstream/debian:{suite}"


LOCAL_BASE = local_base(BASE_SUITE)


def local_toolkit(kernel: str) -> str:
    return f"localhost/habana-upstream/driver-toolkit:{tags.tag_text(kernel)}"


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


KEY_LABEL = "habana-ai-driver.upstream.key"


def ensure_base_image(
    upstream: Upstream,
    podman: Podman,
    on_line: LineSink | None = None,
    suite: str = BASE_SUITE,
) -> None:
    """mmdebstrap a minimal Debian once; re-import only when the recipe changes (stable digest).
    Debian 12's is pushed as the upstream's base image; another release's stays local (its
    toolkits start from it)."""
    argv = mmdebstrap_argv(suite)
    key = recipe_key(*argv)
    local = local_base(suite)
    if podman.image_label(local, KEY_LABEL) != key:
        tarball = upstream.artefacts / f"base-{key}.tar"
        if not tarball.exists():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            podman.runner.run([*argv, str(partial)], on_line=on_line)
            partial.replace(tarball)
        podman.import_tarball(tarball, local, [f"LABEL {KEY_LABEL}={key}"])
    if suite == BASE_SUITE:
        _push(upstream, podman, local, upstream.base_image, on_line)


def toolkit_containerfile(base_image: str, kernel: str) -> str:
    """A driver-toolkit stand-in: headers for exactly one kernel, its vmlinuz and its in-tree
    modules with their depmod indexes (the real toolkit installs kernel-core + kernel-modules)."""
    packages = " ".join((*TOOLKIT_PACKAGES, f"linux-headers-{kernel}"))
    release = json.dumps({"KERNEL_VERSION": kernel, "RT_KERNEL_VERSION": "", "RHEL_VERSION": ""})
    # Debian 13's kernel packages keep their modules under /usr/lib/modules (merged /usr).
    modules = f"./lib/modules/{kernel}"
    if suite_of(kernel) != BASE_SUITE:
        modules = f"--wildcards '*/lib/modules/{kernel}'"
    return (
        f"FROM {base_image}\n"
        "RUN apt-get update -q \\\n"
        f" && apt-get install -y -q --no-install-recommends {packages} \\\n"
        f" && cd /tmp && apt-get download -q linux-image-{kernel} \\\n"
        f" && dpkg-deb --fsys-tarfile linux-image-{kernel}_*.deb \\\n"
        "    | tar -x --keep-directory-symlink -C / \\\n"
        f"      ./boot/vmlinuz-{kernel} {modules} \\\n"
        f" && depmod {kernel} && test -s /lib/modules/{kernel}/modules.dep \\\n"
        " && rm -f /tmp/*.deb && rm -rf /var/lib/apt/lists/*\n"
        f"RUN echo '{release}' > /etc/driver-toolkit-release.json\n"
    )


def ensure_toolkit_image(
    upstream: Upstream, podman: Podman, kernel: str, on_line: LineSink | None = None
) -> None:
    directory = upstream.artefacts / "toolkit" / kernel
    directory.mkdir(parents=True, exist_ok=True)
    suite = suite_of(kernel)
    if suite != BASE_SUITE:
        ensure_base_image(upstream, podman, on_line, suite)
    (directory / "Containerfile").write_text(toolkit_containerfile(local_base(suite), kernel))
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
