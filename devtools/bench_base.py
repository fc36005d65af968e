"""What every benchmark section stands on: the bench's own upstream and registry front, the
versions files over them, synthetic libraries pushed through the registry's HTTP API, and where
the results are kept."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from devtools import local_upstream, vendor_packages
from devtools.bench_registry import RegistryFront
from habana_tasks.build import labels, metadata
from habana_tasks.build import service as build_service
from habana_tasks.build.driver_package import PackageCache
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.errors import Failure
from habana_tasks.core.http_client import HTTPClient
from habana_tasks.core.process import ProcessRunner
from habana_tasks.registry.client import RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST

DRIVER = "6.1.0-1"
BUILD_KERNELS = ("6.1.0-54-amd64", "6.1.0-55-amd64", "6.1.0-56-amd64")
# A real library's shape: three drivers per kernel (one package URL each), a toolkit per kernel.
DRIVERS = ("6.1.0-1", "6.1.0-2", "6.1.0-3")
REFRESH_KERNELS = (7, 67, 667)  # 21, 201 and 2,001 pairs
REFRESH_PAIRS_MAX = REFRESH_KERNELS[-1] * len(DRIVERS)
REFRESH_RUNS = 5
LATENCIES = (0.0, 0.030)  # loopback, and a registry in another region
PHASES = ("compile", "assembly", "checks", "load test", "push")
# A job log's line: its seconds since the start, and a stage mark (`==> name`) if it is one.
LOG_LINE_RE = re.compile(r"^\[\s*([0-9.]+)\] (==> )?(.*)$")
STEP_RE = re.compile(r"^\[\s*([0-9.]+)\] (?:\[\d+/\d+\] )?(STEP \d+/\d+: .*)$")


@dataclass
class Results:
    setup: dict[str, str] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, markdown)
    data: dict[str, Any] = field(default_factory=dict)


def refresh_key(pairs: int, latency: float) -> str:
    """Where one size at one latency is kept in the results' data."""
    return f"refresh_{pairs}_{latency * 1000:.0f}ms"


def spread(times: Sequence[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f}, n={len(times)})"


class BenchBase:
    def __init__(self, project: Project, work: Path, console: Console) -> None:
        # Every run starts from nothing of its own: registry data, caches and logs live under
        # `work`, which is wiped; only the local upstream's content cache is shared.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.project = replace(project, cache_dir=work / "cache")
        self.work = work
        self.console = console
        self.runner = ProcessRunner()
        self.podman = build_service.make_podman(commands.announcer(console), self.runner)
        self.results = Results()
        self.upstream = local_upstream.Upstream(
            work / "upstream",
            registry_port=free_port(),
            http_port=free_port(),
            cache=local_upstream.default_root(project.root),
        )
        self.http = requests.Session()
        self.k2_cold = 0.0
        self.front: RegistryFront | None = None
        self.layered: set[str] = set()

    # -- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        self.console.print("bench: local upstream (cached images, fresh registry)")
        local_upstream.up(self.upstream, self.podman, BUILD_KERNELS, [DRIVER, *DRIVERS])
        self.front = RegistryFront(self.upstream.registry, self.work / "tls")
        # This process resolves through the front too (to label the synthetic images).
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.front.ca)
        versions = {
            "podman": self._version(["podman", "--version"]),
            "docker-registry": self._version(["docker-registry", "--version"]),
            "skopeo": self._version(["skopeo", "--version"]),
            "qemu": self._version(["qemu-system-x86_64", "--version"]),
        }
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        self.results.setup = {
            "cores": str(os.cpu_count()),
            "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
            "python": platform.python_version(),
            "kernel (host)": platform.release(),
            **versions,
        }

    def stop(self) -> None:
        if self.front:
            self.front.stop()
        local_upstream.stop(self.upstream)

    def _version(self, argv: list[str]) -> str:
        done = self.runner.run(argv, keep_output=True, check=False)
        return done.output[0] if done.output else "not installed"

    def versions_file(self, name: str, kernels: Sequence[str], front: bool = False) -> Path:
        """A versions file over the bench upstream: plain HTTP for builds, or (front) through
        the TLS + token front, with every driver of DRIVERS on every kernel."""
        u = self.upstream
        host = self.front.host if front and self.front else u.registry
        insecure = "" if front else f'"{host}"'
        toolkit = "bench/toolkit" if front else "upstream/driver-toolkit"
        drivers = ", ".join(f'"{d}"' for d in (DRIVERS if front else (DRIVER,)))
        entries = "".join(
            f'\n[[kernels]]\nrelease = "{k}"\ndrivers = [{drivers}]\n' for k in kernels
        )
        path = self.work / f"{name}.toml"
        path.write_text(
            f'[library]\nrepository = "{host}/bench/{name}"\n'
            f"insecure_registries = [{insecure}]\n"
            f'[toolkit]\nimage = "{host}/{toolkit}:{{kernel}}"\n'
            f'[driver]\npackage_url = "{u.package_url("habanalabs-{driver}.el8.noarch.rpm")}"\n'
            f"modules = {json.dumps(list(vendor_packages.EXAMPLE_MODULES))}\n" + entries
        )
        return path

    # -- registry plumbing for synthetic matrices (HTTP API, like any registry client) ---------

    def _url(self, repo: str, rest: str) -> str:
        return f"http://{self.upstream.registry}/v2/{repo}/{rest}"

    def _put_blob(self, repo: str, body: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        start = self.http.post(self._url(repo, "blobs/uploads/"), timeout=30)
        start.raise_for_status()
        location = start.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.upstream.registry}{location}"
        sep = "&" if "?" in location else "?"
        self.http.put(f"{location}{sep}digest={digest}", data=body, timeout=30).raise_for_status()
        return digest

    def _put_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> None:
        response = self.http.put(
            self._url(repo, f"manifests/{tag}"),
            data=body,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        response.raise_for_status()

    def _layer(self) -> tuple[str, int, str]:
        """An empty layer (pushed once per repository): (digest, size, diff_id)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w"):
            pass
        layer = gzip.compress(raw.getvalue(), mtime=0)
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        return digest, len(layer), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()

    def push_labelled(
        self,
        repo: str,
        tag: str,
        image_labels: dict[str, str],
        layer: tuple[str, int, str],
    ) -> None:
        """A manifest whose config carries `image_labels`, as its annotations too (as a build
        writes them), over one empty layer."""
        layer_digest, layer_size, diff_id = layer
        if repo not in self.layered:
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w"):
                pass
            assert self._put_blob(repo, gzip.compress(raw.getvalue(), mtime=0)) == layer_digest
            self.layered.add(repo)
        cfg = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": image_labels},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        cfg_digest = self._put_blob(repo, cfg)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": cfg_digest,
                    "size": len(cfg),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest,
                        "size": layer_size,
                    }
                ],
                "annotations": image_labels,
            }
        ).encode()
        self._put_manifest(repo, tag, manifest, OCI_MANIFEST)

    def synthetic_library(self, kernels: int) -> Path:
        """A library shaped like a real one, already published and current: `kernels` kernels,
        each with its own toolkit digest and DRIVERS drivers (one package URL each), reached
        through the TLS + token front; every image carries the labels a build gives it."""
        assert self.front is not None
        names = [f"6.1.0-{1000 + i}-amd64" for i in range(kernels)]
        for kernel in names:  # a distinct digest per kernel: its own config blob
            self.push_labelled("bench/toolkit", kernel, {"kernel": kernel}, self._layer())
        versions = self.versions_file(f"refresh-{kernels}", names, front=True)
        cfg = versions_file.load(versions)
        http = HTTPClient()
        self.front.delay = 0.0
        resolution = metadata.resolve(
            cfg.targets,
            RegistryClient(cfg.insecure_registries, http),
            PackageCache(self.work / "downloads", http),
            self.project.dockerfile,
            with_remote=False,
        )
        repo = cfg.repository.split("/", 1)[1]
        for target in cfg.targets:
            inputs = resolution.inputs[target.tag]
            assert not isinstance(inputs, Failure), inputs
            image_labels = labels.image_labels(cfg, target, inputs, labels.rfc3339(0), "plain")
            self.push_labelled(repo, target.tag, image_labels, self._layer())
        return versions

    def _podman_size(self, image: str) -> float:
        if not self.podman.image_exists(image):
            self.podman.pull(image, tls_verify=False)
        done = self.runner.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", image], keep_output=True
        )
        return int(done.text.strip()) / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
