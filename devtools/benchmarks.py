"""`nox -s bench`: the library pipeline against the per-image way, measured in one run.

Every figure is written to docs/benchmarks.md (and benchmarks.json) with its setup, its
baseline measured in the same run, and the command that reproduces it. No goal here is a test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from devtools import local_upstream
from habana_tasks import build_service, commands, config, labels, load_test, metadata
from habana_tasks.driver_package import PackageCache
from habana_tasks.http_client import HTTPClient
from habana_tasks.kernel_modules import KernelModuleStore
from habana_tasks.manifests import MANIFEST_ACCEPT, OCI_MANIFEST
from habana_tasks.process import ProcessRunner
from habana_tasks.project import Project
from habana_tasks.registry import RegistryClient

DRIVER = "6.1.0-1"
BUILD_KERNELS = ("6.1.0-54-amd64", "6.1.0-55-amd64", "6.1.0-56-amd64")
REFRESH_SIZES = (10, 50, 200)
ORIGINAL_IMAGE_MB = 143.0
STEP_RE = re.compile(r"^\[\s*([0-9.]+)\] (?:\[\d+/\d+\] )?(STEP \d+/\d+: .*)$")
LATENCY_SECONDS = 0.030  # a registry in another region: ~30 ms per round trip


@dataclass
class Results:
    setup: dict[str, str] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, markdown)
    data: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def spread(times: Sequence[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f}, n={len(times)})"


class Bench:
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
            registry_port=_free_port(),
            http_port=_free_port(),
            cache=local_upstream.default_root(project.root),
        )
        self.http = requests.Session()
        self.k2_cold = 0.0

    # -- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        self.console.print("bench: local upstream (cached images, fresh registry)")
        local_upstream.up(self.upstream, self.podman, BUILD_KERNELS, [DRIVER])
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
        local_upstream.stop(self.upstream)

    def _version(self, argv: list[str]) -> str:
        done = self.runner.run(argv, keep_output=True, check=False)
        return done.output[0] if done.output else "not installed"

    def versions_file(self, name: str, kernels: Sequence[str], registry: str | None = None) -> Path:
        """A versions file over the bench upstream; `registry` reaches it another way (proxy)."""
        u = self.upstream
        host = registry or u.registry
        toolkit_template = f"{host}/upstream/driver-toolkit:{{kernel}}"
        entries = "".join(
            f'\n[[kernels]]\nrelease = "{k}"\ndrivers = ["{DRIVER}"]\n' for k in kernels
        )
        path = self.work / f"{name}.toml"
        path.write_text(
            f'[library]\nrepository = "{host}/bench/{name.removesuffix("-far")}"\n'
            f'insecure_registries = ["{host}"]\n'
            f'[base]\nimage = "{u.base_image.replace(u.registry, host)}"\n'
            f'[toolkit]\nimage = "{toolkit_template}"\n'
            f'[driver]\npackage_url = "{u.package_url("habanalabs-{driver}.el8.noarch.rpm")}"\n'
            + entries
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

    def copy_tag(self, repo: str, source_tag: str, tags: Sequence[str]) -> None:
        got = self.http.get(
            self._url(repo, f"manifests/{source_tag}"),
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=30,
        )
        got.raise_for_status()
        for tag in tags:
            self._put_manifest(repo, tag, got.content, got.headers["Content-Type"].split(";")[0])

    def push_labelled(
        self, repo: str, tag: str, image_labels: dict[str, str], layer: tuple[str, int, str]
    ) -> None:
        layer_digest, layer_size, diff_id = layer
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
            }
        ).encode()
        self._put_manifest(repo, tag, manifest, OCI_MANIFEST)

    def synthetic_library(self, size: int) -> Path:
        """N pairs, each already published under its tag with the labels a build would give."""
        kernels = [f"6.1.0-{1000 + i}-amd64" for i in range(size)]
        self.copy_tag("upstream/driver-toolkit", BUILD_KERNELS[-1], kernels)
        versions = self.versions_file(f"refresh-{size}", kernels)
        cfg = config.load(versions)
        http = HTTPClient()
        resolution = metadata.resolve(
            cfg.targets,
            RegistryClient(cfg.insecure_registries, http),
            PackageCache(self.work / "downloads", http),
            self.project.dockerfile,
            with_remote=False,
        )
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w"):
            pass
        layer = gzip.compress(raw.getvalue(), mtime=0)
        repo = f"bench/refresh-{size}"
        layer_digest = self._put_blob(repo, layer)
        diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
        for target in cfg.targets:
            inputs = resolution.inputs[target.tag]
            assert not isinstance(inputs, str), inputs
            image_labels = labels.image_labels(cfg, target, inputs, "2026-01-01T00:00:00Z", True)
            self.push_labelled(repo, target.tag, image_labels, (layer_digest, len(layer), diff_id))
        return versions

    # -- 1. no-op refresh ------------------------------------------------------------------

    def refresh(self) -> None:
        rows, curve, far_rows = [], [], []
        for size in REFRESH_SIZES:
            versions = self.synthetic_library(size)
            cfg = config.load(versions)
            tags = [t.tag for t in cfg.targets]
            counts: list[int] = []

            def ours(cfg: config.Config = cfg, counts: list[int] = counts) -> None:
                run = build_service.resolve_and_plan(self.project, cfg, cfg.targets)
                assert all(j.action.value == "skip" for j in run.jobs), run.jobs[0].reason
                counts.append(run.registry.requests_sent)

            ours_times = timed(ours, 5)

            cli_times = timed(self._cli("build-all", "--dry-run", versions=versions), 5)
            status_times = timed(self._cli("status", "--format", "json", versions=versions), 3)
            loop_times = timed(self._per_image_loop(cfg.repository, tags), 5 if size < 200 else 3)
            ratio = statistics.median(loop_times) / statistics.median(cli_times)
            per_pair = counts[-1] / size  # a repeated run: config blobs come from the cache
            first_per_pair = counts[0] / size
            rows.append(
                f"| {size} | {spread(ours_times)} | {spread(cli_times)} | {spread(status_times)} | "
                f"{spread(loop_times)} | {ratio:.1f}× | {first_per_pair:.2f} / {per_pair:.2f} |"
            )
            curve.append((size, statistics.median(cli_times), statistics.median(loop_times)))
            if size >= 50:
                far_rows.append(self._refresh_far(size, tags))
            self.results.data[f"refresh_{size}"] = {
                "in_process_s": ours_times,
                "cli_s": cli_times,
                "status_cli_s": status_times,
                "skopeo_loop_s": loop_times,
                "requests_per_pair": per_pair,
                "requests_per_pair_first": first_per_pair,
                "ratio": ratio,
            }
        self.results.sections.append(
            (
                "1. No-op refresh (every image current)",
                "Each pair already published with the labels a build gives it; every run must "
                "decide "
                "`skip` for all. *In process*: resolution and planning as `build-all` does them. "
                "*CLI*: `invoke build-all --dry-run` as a user runs it (process start included). "
                "*Baseline*: one `skopeo inspect` process per tag, sequentially, as the original "
                "build-matrix script did with `podman inspect`. Ratio = baseline / CLI.\n\n"
                "`invoke status` (the same resolution plus the repository's tag list) is shown too."
                "\n\n| pairs | in process | CLI | `invoke status` | skopeo loop | ratio "
                "| requests / pair (first / repeated run) |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
                "![refresh time vs pairs](refresh-scaling.png)\n\n"
                f"**With {LATENCY_SECONDS * 1000:.0f} ms per request** (a proxy on 127.0.0.1 "
                "delays "
                "every registry request, as a registry in another region would): the same runs.\n\n"
                "| pairs | CLI | skopeo loop | ratio |\n| --- | --- | --- | --- |\n"
                + "\n".join(far_rows)
                + "\n\n"
                "Where the time goes (profiled with the in-process figures): on a first run each "
                "pair "
                "costs three registry requests (its toolkit manifest, its image manifest, its "
                "config "
                "blob for the labels), on later runs two (config blobs are immutable and cached by "
                "digest), sent 16 at a time; locally each costs ~2 ms of Python request handling "
                "under the GIL, and the CLI adds ~0.5 s of interpreter start and imports. "
                "The per-image loop pays a process start and three sequential "
                "round trips per tag, so the gap grows with latency, not with a local registry "
                "that "
                "answers in under a millisecond.\n",
            )
        )
        self._plot(curve)

    def _cli(self, *args: str, versions: Path) -> Callable[[], object]:
        """A task run as a user runs it: a new process, from the project folder."""
        argv = ["invoke", *args, "--versions", str(versions)]
        env = {"HABANA_CACHE_DIR": str(self.work / "cli-cache")}
        return lambda: self.runner.run(argv, cwd=self.project.root, env=env)

    def _per_image_loop(self, repository: str, tags: Sequence[str]) -> Callable[[], object]:
        """The baseline: one skopeo process per tag, one after another."""
        script = (
            'for t in "$@"; do skopeo inspect --tls-verify=false '
            f'"docker://{repository}:$t" >/dev/null || exit 1; done'
        )
        return lambda: self.runner.run(["sh", "-c", script, "sh", *tags])

    def _refresh_far(self, size: int, tags: Sequence[str]) -> str:
        proxy = DelayProxy(self.upstream.registry, LATENCY_SECONDS)
        try:
            versions = self.versions_file(
                f"refresh-{size}-far", [f"6.1.0-{1000 + i}-amd64" for i in range(size)], proxy.host
            )
            cfg = config.load(versions)
            cli_times = timed(self._cli("build-all", "--dry-run", versions=versions), 3)
            loop_times = timed(self._per_image_loop(cfg.repository, tags), 3)
        finally:
            proxy.stop()
        ratio = statistics.median(loop_times) / statistics.median(cli_times)
        self.results.data[f"refresh_{size}_far"] = {
            "cli_s": cli_times,
            "skopeo_loop_s": loop_times,
            "ratio": ratio,
            "latency_s": LATENCY_SECONDS,
        }
        return f"| {size} | {spread(cli_times)} | {spread(loop_times)} | {ratio:.0f}× |"

    def _plot(self, curve: list[tuple[int, float, float]]) -> None:
        try:
            # Only the bench session installs matplotlib.
            import matplotlib  # type: ignore[import-not-found]  # noqa: PLC0415

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # type: ignore[import-not-found]  # noqa: PLC0415
        except ImportError:
            self.console.print("matplotlib is not installed: no plot")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        sizes = [c[0] for c in curve]
        ax.plot(sizes, [c[1] for c in curve], marker="o", label="invoke build-all --dry-run")
        ax.plot(sizes, [c[2] for c in curve], marker="s", label="skopeo inspect loop")
        ax.set_xlabel("pairs in the matrix")
        ax.set_ylabel("seconds (median)")
        ax.set_yscale("log")
        ax.set_title("No-op refresh against a local registry")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.project.root / "docs" / "refresh-scaling.png", dpi=100)

    # -- 2/3. builds -------------------------------------------------------------------------

    def build_run(
        self, name: str, kernels: Sequence[str], *, jobs: int, force: bool, cache: str = ""
    ) -> dict[str, Any]:
        """One build-all; `cache` names a download cache shared with an earlier run."""
        versions = self.versions_file(name, kernels)
        cfg = config.load(versions)
        cache_dir = self.work / f"cache-{cache or name}"
        downloads_before = len(list((cache_dir / "downloads" / "sha256").glob("*")))
        started = time.perf_counter()
        results = commands.run_build(
            replace(self.project, cache_dir=cache_dir),
            cfg,
            cfg.targets,
            jobs=jobs,
            force=force,
            console=Console(file=io.StringIO()),
            load_test=False,
            podman=self.podman,
        ).results
        wall = time.perf_counter() - started
        assert all(r.ok for r in results), results
        compile_s = sum(_compile_seconds(Path(r.log)) for r in results if r.log)
        downloads = len(list((cache_dir / "downloads" / "sha256").glob("*"))) - downloads_before
        return {"wall": wall, "compile": compile_s, "downloads": downloads, "results": results}

    def builds(self) -> None:
        rows = []
        single = 0.0
        for k in (1, 2, 3):
            kernels = BUILD_KERNELS[:k]
            cold = self.build_run(f"k{k}", kernels, jobs=1, force=True)
            # A --no-cache build leaves no reusable RUN layers: one cached build primes the cache.
            self.build_run(f"k{k}-prime", kernels, jobs=1, force=False)
            warm = self.build_run(f"k{k}-warm", kernels, jobs=1, force=False, cache=f"k{k}-prime")
            if k == 2:
                self.k2_cold = cold["wall"]
            single = cold["wall"] if k == 1 else single
            rows.append(
                f"| {k} | {cold['wall']:.1f} s | {k * single:.1f} s | "
                f"{cold['wall'] / (k * single):.2f} | {cold['compile'] / cold['wall']:.0%} | "
                f"{warm['wall']:.1f} s | {cold['downloads']} / {warm['downloads']} |"
            )
            self.results.data[f"build_k{k}"] = {kk: v for kk, v in cold.items() if kk != "results"}
            self.results.data[f"build_k{k}_warm"] = {
                kk: v for kk, v in warm.items() if kk != "results"
            }
        self.results.sections.append(
            (
                "2. Building K kernels for one driver",
                "Cold = `--force` (no layer cache: every stage rebuilt, module compiled); warm = "
                "the "
                "same inputs built for a fresh repository once podman's layer cache holds them (a "
                "priming build runs in between, unmeasured). Load tests off here (see 4). "
                "Baseline: K × the single-kernel cold time. Compile share = time between the "
                "`RUN make` step and the next step, from the timestamped logs. RPM downloads = "
                "vendor packages fetched by that run: the cold run starts with an empty download "
                "cache (one driver version: one download however many kernels), the warm run "
                "reuses the priming run's cache.\n\n"
                "| K | cold | K × single | ratio | compile share | warm | RPM downloads |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n",
            )
        )

    def parallel(self) -> None:
        one = self.k2_cold  # measured in section 2: K = 2, cold, --jobs 1
        two = self.build_run("jobs2", BUILD_KERNELS[:2], jobs=2, force=True)["wall"]
        self.results.data["parallel"] = {"jobs1": one, "jobs2": two}
        self.results.sections.append(
            (
                "3. Parallelism (K = 2, cold, 2 cores)",
                f"| --jobs 1 | --jobs 2 | speed-up |\n| --- | --- | --- |\n"
                f"| {one:.1f} s | {two:.1f} s | {one / two:.2f}× |\n\n"
                "The compile already uses both cores (`make -j$(nproc)`), so two builds at once "
                "mostly overlap the single-threaded parts (image export, checks, push).\n",
            )
        )

    # -- 4. smoke, 5. sizes ------------------------------------------------------------------

    def smoke_and_sizes(self) -> None:
        versions = self.versions_file("k3-warm", BUILD_KERNELS)  # built in section 2
        cfg = config.load(versions)
        registry = RegistryClient(cfg.insecure_registries)
        smoke_rows, size_rows = [], []
        for target in cfg.targets[1:]:
            reports = []
            for _ in range(3):
                with (self.work / f"load-test-{target.tag}.log").open("w") as log:
                    report = load_test.retest_image(
                        self.podman,
                        KernelModuleStore(self.podman, self.work / "kernels"),
                        registry,
                        cfg,
                        target,
                        target.image,
                        self.work / "lt",
                        log,
                    )
                assert report.passed, report
                reports.append(report)
            seconds = [r.seconds or 0.0 for r in reports]
            initramfs = reports[-1].initramfs_bytes or 0
            smoke_rows.append(f"| {target.kernel} | {spread(seconds)} | {initramfs / 1e6:.0f} MB |")
            self.results.data[f"smoke_{target.kernel}"] = {
                "seconds": seconds,
                "initramfs": initramfs,
            }
        for target in cfg.targets:
            remote = registry.inspect(target.image)
            image_mb = self._podman_size(target.image)
            toolkit_mb = self._podman_size(local_upstream.local_toolkit(target.kernel))
            self.results.data[f"size_{target.kernel}"] = image_mb
            size_rows.append(
                f"| {target.kernel} | {(remote.size or 0) / 1e6:.1f} MB | {image_mb:.1f} MB | "
                f"{toolkit_mb:.0f} MB | {ORIGINAL_IMAGE_MB:.0f} MB |"
            )
        self.results.sections.append(
            (
                "4. Load test (qemu, TCG, no KVM)",
                "`invoke smoke --kernel K`: export, initramfs from the image, boot, load, verdict. "
                "Seconds are the guest's (qemu start to power-off).\n\n"
                "| kernel | seconds | initramfs |\n| --- | --- | --- |\n"
                + "\n".join(smoke_rows)
                + "\n",
            )
        )
        self.results.sections.append(
            (
                "5. Image size",
                "Compressed = what the registry stores (sum of layers); uncompressed = podman's "
                "image size. The original recipe's ubi-minimal image was 143 MB (reference "
                "line).\n\n"
                "| kernel | compressed | uncompressed | toolkit image | original |\n"
                "| --- | --- | --- | --- | --- |\n" + "\n".join(size_rows) + "\n",
            )
        )

    def _podman_size(self, image: str) -> float:
        if not self.podman.image_exists(image):
            self.podman.pull(image, tls_verify=False)
        done = self.runner.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", image], keep_output=True
        )
        return int(done.text.strip()) / 1e6

    # -- report ------------------------------------------------------------------------------

    def goals(self, seconds: float) -> str:
        """Each goal of the benchmark brief, met or missed by how much, from this run's data."""
        d = self.results.data
        refresh = statistics.median(d["refresh_200"]["cli_s"])
        ratio = d["refresh_200"]["ratio"]
        far = d.get("refresh_200_far", {}).get("ratio", 0.0)
        loop_ms = statistics.median(d["refresh_200"]["skopeo_loop_s"]) / 200 * 1000
        smoke = max(statistics.median(v["seconds"]) for k, v in d.items() if k.startswith("smoke_"))
        size = max(v for k, v in d.items() if k.startswith("size_"))
        warm_downloads = max(d[f"build_k{k}_warm"]["downloads"] for k in (1, 2, 3))
        cold_downloads = max(d[f"build_k{k}"]["downloads"] for k in (1, 2, 3))

        def row(goal: str, measured: str, met: bool, note: str = "") -> str:
            return f"| {goal} | {measured} | {'met' if met else '**missed**'} | {note} |"

        rows = [
            row("no-op refresh of 200 pairs < 2 s", f"{refresh:.2f} s (CLI)", refresh < 2.0),
            row(
                "≥ 50× faster than the per-image loop",
                f"{ratio:.1f}× local, {far:.0f}× at {LATENCY_SECONDS * 1000:.0f} ms",
                ratio >= 50,
                ""
                if ratio >= 50
                else (
                    f"missed by {50 / ratio:.0f}× locally: skopeo answers a local tag in "
                    f"~{loop_ms:.0f} ms, "
                    "so the loop has little to lose; the gap is latency-bound and grows with "
                    "distance. Closing it further: fewer requests per pair (a toolkit digest "
                    "cache keyed by tag with a short TTL, or HEAD instead of GET for manifests "
                    "whose digest is already known), more concurrency than 16, and a leaner "
                    "HTTP stack than requests (~2 ms of CPU per request here)"
                ),
            ),
            row(
                "one RPM download per driver per run, none when cached",
                f"{cold_downloads} cold / {warm_downloads} cached",
                cold_downloads == 1 and warm_downloads == 0,
            ),
            row("load test ≤ 10 s per image", f"{smoke:.1f} s (worst median)", smoke <= 10),
            row("Debian example image ≤ 90 MB", f"{size:.1f} MB uncompressed", size <= 90),
            row("benchmark < 15 min", f"{seconds / 60:.1f} min", seconds < 900),
        ]
        return (
            "| goal | measured | result | why / what would close the gap |\n"
            "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
        )

    def write(self, seconds: float) -> Path:
        docs = self.project.root / "docs"
        docs.mkdir(exist_ok=True)
        setup = "\n".join(f"| {k} | {v} |" for k, v in self.results.setup.items())
        body = "\n\n".join(f"## {title}\n\n{text}" for title, text in self.results.sections)
        (docs / "benchmarks.md").write_text(
            "# Benchmarks\n\n"
            "Regenerate with `.venv/bin/nox -s bench` (after `scripts/install-deps`); it stands up "
            "its own registry on 127.0.0.1 and uses the local upstream's cached images. "
            f"This run took {seconds / 60:.1f} min.\n\n"
            f"| setup | |\n| --- | --- |\n{setup}\n\n## Goals\n\n{self.goals(seconds)}\n{body}\n"
        )
        (docs / "benchmarks.json").write_text(
            json.dumps(
                {"setup": self.results.setup, "data": self.results.data}, indent=2, default=str
            )
            + "\n"
        )
        return docs / "benchmarks.md"


class DelayProxy:
    """Forwards registry reads after a fixed delay: a far-away registry, on loopback only."""

    HEADERS = (
        "Content-Type",
        "Docker-Content-Digest",
        "Location",
        "WWW-Authenticate",
        "Link",
        "Docker-Distribution-Api-Version",
    )

    def __init__(self, upstream: str, delay: float) -> None:
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                time.sleep(delay)
                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                # Clients send several Accept lines (skopeo does): forward them all, joined.
                forwarded = {"Accept": ", ".join(self.headers.get_all("Accept") or ["*/*"])}
                if self.headers.get("Authorization"):
                    forwarded["Authorization"] = self.headers["Authorization"]
                response = session.request(
                    self.command,
                    f"http://{upstream}{self.path}",
                    headers=forwarded,
                    allow_redirects=False,
                    timeout=30,
                )
                body = response.content
                self.send_response(response.status_code)
                for name in DelayProxy.HEADERS:
                    if name in response.headers:
                        self.send_header(name, response.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _compile_seconds(log: Path) -> float:
    """Seconds between the `RUN make` step and the step after it, from a timestamped job log."""
    steps = [
        (float(m.group(1)), m.group(2))
        for line in log.read_text().splitlines()
        if (m := STEP_RE.match(line))
    ]
    for (at, text), (after, _) in itertools.pairwise(steps):
        if "RUN make" in text:
            return after - at
    return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(project: Project, console: Console | None = None) -> Path:
    console = console or Console()
    work = project.cache / "bench"
    started = time.perf_counter()
    bench = Bench(project, work, console)
    bench.start()
    try:
        steps = (
            ("no-op refresh", bench.refresh),
            ("builds", bench.builds),
            ("parallelism", bench.parallel),
            ("smoke and sizes", bench.smoke_and_sizes),
        )
        for name, step in steps:
            console.print(f"bench: {name}")
            step()
    finally:
        bench.stop()
    path = bench.write(time.perf_counter() - started)
    console.print(f"wrote {path}")
    return path
