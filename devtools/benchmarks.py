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
import resource
import shutil
import socket
import statistics
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from devtools import local_upstream
from devtools.bench_registry import RegistryFront
from habana_tasks.build import labels, metadata
from habana_tasks.build import service as build_service
from habana_tasks.build.driver_package import PackageCache
from habana_tasks.build.metadata import LOOKUP_THREADS as LOOKUP_CONCURRENCY
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands
from habana_tasks.config import versions as config
from habana_tasks.config.project import Project
from habana_tasks.core.errors import Failure
from habana_tasks.core.http_client import HTTPClient
from habana_tasks.core.process import ProcessRunner
from habana_tasks.registry.client import RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST
from habana_tasks.verification import load_testing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.worker import WorkerTools

DRIVER = "6.1.0-1"
BUILD_KERNELS = ("6.1.0-54-amd64", "6.1.0-55-amd64", "6.1.0-56-amd64")
# A real library's shape: three drivers per kernel (one package URL each), a toolkit per kernel.
DRIVERS = ("6.1.0-1", "6.1.0-2", "6.1.0-3")
REFRESH_KERNELS = (7, 67, 667)  # 21, 201 and 2,001 pairs
REFRESH_PAIRS_MAX = REFRESH_KERNELS[-1] * len(DRIVERS)
REFRESH_RUNS = 5
LATENCIES = (0.0, 0.030)  # loopback, and a registry in another region
PHASES = ("compile", "assembly", "checks", "load test", "push")
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
            f"modules = {json.dumps(list(local_upstream.EXAMPLE_MODULES))}\n" + entries
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
        cfg = config.load(versions)
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

    # -- 1. no-op refresh ------------------------------------------------------------------

    def refresh(self) -> None:
        assert self.front is not None
        rows: list[str] = []
        curve: list[tuple[int, float, float, float]] = []
        for kernels in REFRESH_KERNELS:
            versions = self.synthetic_library(kernels)
            cfg = config.load(versions)
            pairs = len(cfg.targets)
            refs = [t.toolkit_image for t in cfg.targets[:: len(DRIVERS)]]
            refs += [t.image for t in cfg.targets]
            (self.work / f"refs-{pairs}").write_text("\n".join(refs) + "\n")
            for latency in LATENCIES:
                self.front.delay = latency
                row = self._refresh_case(versions, pairs, latency)
                rows.append(row["line"])
                if latency == LATENCIES[-1]:
                    curve.append((pairs, row["warm"], row["parallel"], row["sequential"]))
        self.results.sections.append(
            (
                "1. No-op refresh (every image current)",
                "The daily job's real work: every pair already published with the labels a "
                "build gives it, so every run must decide `skip` for all. The library is shaped "
                f"like a real one: {len(DRIVERS)} drivers per kernel (one package URL each, "
                "re-validated once per run with a conditional request), a distinct toolkit digest "
                "per kernel, no base. The registry is reached as ghcr.io or quay.io are: TLS "
                "(a CA made for the run, trusted by every client through `REQUESTS_CA_BUNDLE` / "
                "`SSL_CERT_FILE`), and a 401 with a Bearer challenge until a token from its realm "
                "is presented (anonymous pulls too), through a front that can delay every request "
                "and counts every request, whoever sends it.\n\n"
                "*Tool*: `invoke build-all --dry-run` as a user runs it (a new process each time; "
                "interpreter start and imports included). *Cold*: an empty cache (nothing known, "
                "packages downloaded); *warm*: the same command again with the cache of an earlier "
                "run. *Baselines* do the same decision work — the toolkit digest of every kernel "
                "and the fingerprint label of every image — with `skopeo inspect --no-tags "
                "--format '{{.Digest}} {{index .Labels \"…fingerprint\"}}'` per reference: "
                "(a) one after another, the way the original script did; (b) 16 at a time with "
                "`xargs -P 16`. Runs are interleaved (cold, warm, (b), (a), then again); "
                "figures are medians with min–max and n. Requests are counted at the front for "
                "every run.\n\n"
                "| pairs | latency | tool cold | tool warm | (a) sequential | (b) xargs -P 16 | "
                "warm vs (a) / (b) | requests / pair cold / warm / (b) | tool CPU s (warm) | "
                "tool peak RSS |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
                + "\n".join(rows)
                + "\n\n![refresh time vs pairs](refresh-scaling.png)\n\n"
                + self._refresh_notes()
                + "\n",
            )
        )
        self._plot(curve)

    def _refresh_case(self, versions: Path, pairs: int, latency: float) -> dict[str, Any]:
        """One size at one latency: tool cold and warm, baselines (a) and (b), interleaved."""
        assert self.front is not None
        warm_cache = self.work / f"warm-{pairs}"
        shutil.rmtree(warm_cache, ignore_errors=True)
        self._tool(versions, warm_cache)  # primes the warm cache (unmeasured)
        n = REFRESH_RUNS
        n_parallel = 5 if pairs < 1000 else 3
        n_sequential = 5 if pairs < 100 else (3 if pairs < 1000 else 1)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("cold", "warm", "b", "a")}
        for i in range(n):
            cold_cache = self.work / f"cold-{pairs}-{i}"
            shutil.rmtree(cold_cache, ignore_errors=True)
            runs["cold"].append(self._tool(versions, cold_cache))
            runs["warm"].append(self._tool(versions, warm_cache))
            if i < n_parallel:
                runs["b"].append(self._skopeo(pairs, parallel=16))
            if i < n_sequential:
                runs["a"].append(self._skopeo(pairs, parallel=1))
            shutil.rmtree(cold_cache, ignore_errors=True)

        def wall(kind: str) -> list[float]:
            return [r["wall"] for r in runs[kind]]

        def per_pair(kind: str) -> float:
            return statistics.median(r["requests"] for r in runs[kind]) / pairs

        warm, seq, par = (statistics.median(wall(k)) for k in ("warm", "a", "b"))
        rss = max(r["rss_mb"] for r in runs["warm"] + runs["cold"])
        cpu = statistics.median(r["cpu"] for r in runs["warm"])
        key = refresh_key(pairs, latency)
        self.results.data[key] = {
            "pairs": pairs,
            "latency_s": latency,
            **{f"{kind}_runs": value for kind, value in runs.items()},
            "requests_per_pair": {k: per_pair(k) for k in runs},
        }
        line = (
            f"| {pairs} | {latency * 1000:.0f} ms | {spread(wall('cold'))} "
            f"| {spread(wall('warm'))} | {spread(wall('a'))} | {spread(wall('b'))} "
            f"| {seq / warm:.0f}× / {par / warm:.1f}× "
            f"| {per_pair('cold'):.2f} / {per_pair('warm'):.2f} / {per_pair('b'):.2f} "
            f"| {cpu:.2f} | {rss:.0f} MB |"
        )
        return {"line": line, "warm": warm, "sequential": seq, "parallel": par}

    def _tool(self, versions: Path, cache: Path) -> dict[str, float]:
        """`invoke build-all --dry-run` in a new process, under a wrapper that reports the
        process tree's wall time, CPU seconds and peak RSS (getrusage of its children)."""
        assert self.front is not None
        self.front.reset()
        wrapper = (
            "import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter(); code = subprocess.run(sys.argv[1:]).returncode\n"
            "wall = time.perf_counter() - t; r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'wall': wall, 'cpu': r.ru_utime + r.ru_stime, "
            "'rss_mb': r.ru_maxrss / 1024, 'code': code}))\n"
        )
        invoke = str(Path(sys.executable).parent / "invoke")
        argv = [sys.executable, "-c", wrapper, invoke, "build-all", "--dry-run"]
        # This process does nothing but serve the front while the tool runs: its CPU is the
        # front's (TLS, tokens, forwarding), which shares the cores with the tool.
        before = resource.getrusage(resource.RUSAGE_SELF)
        done = self.runner.run(
            [*argv, "--versions", str(versions)],
            cwd=self.project.root,
            env={"HABANA_CACHE_DIR": str(cache), "REQUESTS_CA_BUNDLE": str(self.front.ca)},
            keep_output=True,
        )
        measured: dict[str, float] = json.loads(done.output[-1])
        assert measured["code"] == 0, done.output[-20:]
        assert "skip" in done.text and "build " not in done.text.replace("build-all", ""), done.text
        measured["requests"] = self.front.requests
        after = resource.getrusage(resource.RUSAGE_SELF)
        measured["front_cpu"] = (after.ru_utime + after.ru_stime) - (
            before.ru_utime + before.ru_stime
        )
        return measured

    def _skopeo(self, pairs: int, parallel: int) -> dict[str, float]:
        """The baseline: one `skopeo inspect --no-tags` per toolkit and per image."""
        assert self.front is not None
        self.front.reset()
        refs = self.work / f"refs-{pairs}"
        fmt = '{{.Digest}} {{index .Labels "io.habana-ai-driver.fingerprint"}}'
        one = f"skopeo inspect --no-tags --format '{fmt}' \"docker://$0\" >/dev/null"
        script = (
            'while read -r ref; do sh -c "$1" "$ref" || exit 1; done < "$0"'
            if parallel == 1
            else f'xargs -P {parallel} -n 1 sh -c "$1" < "$0"'
        )
        started = time.perf_counter()
        self.runner.run(
            ["sh", "-c", script, str(refs), one], env={"SSL_CERT_FILE": str(self.front.ca)}
        )
        return {"wall": time.perf_counter() - started, "requests": self.front.requests}

    def _refresh_notes(self) -> str:
        """What bounds each figure, computed from this run's own numbers."""
        d = self.results.data
        far = d.get(refresh_key(REFRESH_PAIRS_MAX, LATENCIES[-1]))
        if not far:
            return ""
        pairs = far["pairs"]
        warm_requests = statistics.median(r["requests"] for r in far["warm_runs"])
        warm_wall = statistics.median(r["wall"] for r in far["warm_runs"])
        warm_cpu = statistics.median(r["cpu"] for r in far["warm_runs"])
        front_cpu = statistics.median(r["front_cpu"] for r in far["warm_runs"])
        latency_floor = warm_requests * LATENCIES[-1] / LOOKUP_CONCURRENCY
        kernels = pairs // len(DRIVERS)
        return (
            f"Where the time goes at {pairs} pairs and {LATENCIES[-1] * 1000:.0f} ms (warm): "
            f"{warm_requests:.0f} requests — one manifest request per image, one toolkit lookup "
            f"per kernel ({kernels}), a few token and package re-validation requests — so at "
            f"least {warm_requests / pairs:.2f} per pair with this shape (1 + kernels / pairs); "
            f"sent {LOOKUP_CONCURRENCY} at a time they cost ≥ {latency_floor:.1f} s of latency "
            f"alone; the process used {warm_cpu:.1f} s of CPU (TLS, HTTP and JSON in Python, "
            f"interpreter start) and the registry front {front_cpu:.1f} s serving it, for a "
            f"wall time of {warm_wall:.1f} s on {os.cpu_count()} cores: together "
            f"≥ {(warm_cpu + front_cpu) / (os.cpu_count() or 1):.1f} s of wall time, before the "
            "registry behind the front. "
            "The baselines pay a process start, a token and two or three round trips per "
            "reference."
        )

    def _plot(self, curve: list[tuple[int, float, float, float]]) -> None:
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
        ax.plot(sizes, [c[1] for c in curve], marker="o", label="invoke build-all --dry-run (warm)")
        ax.plot(sizes, [c[2] for c in curve], marker="^", label="skopeo inspect, xargs -P 16")
        ax.plot(sizes, [c[3] for c in curve], marker="s", label="skopeo inspect, sequential")
        ax.set_xlabel("pairs in the matrix")
        ax.set_ylabel("seconds (median)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"No-op refresh, TLS + token, {LATENCIES[-1] * 1000:.0f} ms per request")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.project.root / "docs" / "refresh-scaling.png", dpi=100)

    # -- 2/3. builds -------------------------------------------------------------------------

    def build_run(
        self,
        name: str,
        kernels: Sequence[str],
        *,
        jobs: int,
        force: bool,
        cache: str = "",
        compile_cache: bool = True,
        load_test: bool = False,
        extra: str = "",
    ) -> dict[str, Any]:
        """One build-all; `cache` names the cache (downloads, compiled files) of an earlier run."""
        versions = self.versions_file(name, kernels)
        if extra:
            versions.write_text(versions.read_text() + extra)
        cfg = config.load(versions)
        cache_dir = self.work / f"cache-{cache or name}"
        downloads_before = len(list((cache_dir / "downloads" / "sha256").glob("*")))
        started = time.perf_counter()
        results = commands.run_build(
            replace(self.project, cache_dir=cache_dir),
            cfg,
            cfg.targets,
            Console(file=io.StringIO()),
            BuildOptions(jobs=jobs, force=force, load_test=load_test, compile_cache=compile_cache),
            self.podman,
        ).results
        wall = time.perf_counter() - started
        assert all(r.ok for r in results), results
        compile_s = sum(_compile_seconds(Path(r.log)) for r in results if r.log)
        downloads = len(list((cache_dir / "downloads" / "sha256").glob("*"))) - downloads_before
        phases = [_phases(Path(r.log), r.compiled.seconds if r.compiled else 0.0)
                  for r in results if r.log]  # fmt: skip
        return {
            "wall": wall,
            "compile": compile_s,
            "downloads": downloads,
            "phases": phases,
            "cache": [r.compiled.cache if r.compiled else "" for r in results],
            "digests": [r.digest for r in results],
            "results": results,
        }

    def builds(self) -> None:
        rows = []
        single = 0.0
        for k in (1, 2, 3):
            kernels = BUILD_KERNELS[:k]
            cold = self.build_run(f"k{k}", kernels, jobs=1, force=True, compile_cache=False)
            warm = self.build_run(f"k{k}-warm", kernels, jobs=1, force=True, cache=f"k{k}")
            assert set(warm["cache"]) == {"hit"}, warm["cache"]
            if k == 2:
                self.k2_cold = cold["wall"]
            single = cold["wall"] if k == 1 else single
            rows.append(
                f"| {k} | {cold['wall']:.1f} s | {k * single:.1f} s | "
                f"{cold['wall'] / (k * single):.2f} | {cold['compile'] / cold['wall']:.0%} | "
                f"{warm['wall']:.1f} s | {cold['downloads']} / {warm['downloads']} |"
            )
            for label, run in (("", cold), ("_warm", warm)):
                kept = {kk: v for kk, v in run.items() if kk != "results"}
                self.results.data[f"build_k{k}{label}"] = kept
        self.results.sections.append(
            (
                "2. Building K kernels for one driver",
                "n = 1 per figure (a build takes ~30 s; the spread between runs is a few "
                "percent). Cold = `--force --no-compile-cache` (every stage built, the module "
                "compiled); warm = `--force` again with the same cache: every image assembled, "
                "checked and pushed again, the compiled modules from the compile cache. Load "
                "tests off here (see 4 and 6). Baseline: K × the single-kernel cold time. Compile "
                "share = time between the `RUN make` step and the next step, from the "
                "timestamped logs. RPM downloads = vendor packages fetched by that run: the cold "
                "run starts with an empty download cache (one driver version: one download "
                "however many kernels), the warm run reuses its cache.\n\n"
                "| K | cold | K × single | ratio | compile share | warm | RPM downloads |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n",
            )
        )

    def compile_cache(self) -> None:
        """Per pair, each phase cold and from the compile cache (load test on); the whole
        library after a flavour change, before (every pair compiled) and after (the cache)."""
        kernels = BUILD_KERNELS[1:]
        cold = self.build_run("cc", kernels, jobs=1, force=True, compile_cache=False,
                              load_test=True)  # fmt: skip
        hit = self.build_run("cc-hit", kernels, jobs=1, force=True, cache="cc", load_test=True)
        assert hit["digests"] == cold["digests"], (hit["digests"], cold["digests"])
        kmm1 = '\n[image]\nflavour = "kmm1"\n'
        before = self.build_run("cc-kmm1-before", kernels, jobs=1, force=False, cache="cc",
                                compile_cache=False, load_test=True, extra=kmm1)  # fmt: skip
        after = self.build_run("cc-kmm1-after", kernels, jobs=1, force=False, cache="cc",
                               load_test=True, extra=kmm1)  # fmt: skip
        assert set(after["cache"]) == {"hit"}, after["cache"]
        rows = []
        for kernel, one, two in zip(kernels, cold["phases"], hit["phases"], strict=True):
            for label, phases in (("cold", one), ("compile cache hit", two)):
                cells = " | ".join(f"{phases.get(p, 0.0):.1f} s" for p in PHASES)
                rows.append(f"| {kernel} | {label} | {cells} | {sum(phases.values()):.1f} s |")
        per_pair = max(sum(p.values()) for p in hit["phases"])
        self.results.data["compile_cache"] = {
            "cold": {k: v for k, v in cold.items() if k != "results"},
            "hit": {k: v for k, v in hit.items() if k != "results"},
            "flavour_before": before["wall"],
            "flavour_after": after["wall"],
            "per_pair_hit": per_pair,
        }
        self.results.sections.append(
            (
                "6. The compile cache (load test on, n = 1)",
                "Each pair of the example built with `--force --no-compile-cache` (cold: the "
                "driver compiled), then with `--force` (its compiled modules from the compile "
                "cache), load test on. Phases from the job log's stage marks; compile = getting "
                "the compiled files (the `compiled` stage and its export, or reading the "
                "cache's entry); assembly = the rest of the build stage (the compile's inputs "
                "digest, the flavour's tools, the image's one layer). Both runs gave the same "
                f"digests: {', '.join(d or '' for d in hit['digests'])}.\n\n"
                f"| kernel | run | {' | '.join(PHASES)} | total |\n"
                f"| --- | --- | {' | '.join('---' for _ in PHASES)} | --- |\n"
                + "\n".join(rows)
                + "\n\nThe whole example library after a flavour change (`[image] flavour = "
                '"kmm1"`: every pair stale), checked and load-tested: before, every pair '
                f"compiled ({before['wall']:.1f} s); with the compile cache "
                f"({after['wall']:.1f} s, {after['cache'].count('hit')} hits).\n",
            )
        )

    def parallel(self) -> None:
        one = self.k2_cold  # measured in section 2: K = 2, cold, --jobs 1
        two = self.build_run("jobs2", BUILD_KERNELS[:2], jobs=2, force=True)["wall"]
        self.results.data["parallel"] = {"jobs1": one, "jobs2": two}
        self.results.sections.append(
            (
                f"3. Parallelism (K = 2, cold, {os.cpu_count()} cores, n = 1)",
                f"| --jobs 1 | --jobs 2 | speed-up |\n| --- | --- | --- |\n"
                f"| {one:.1f} s | {two:.1f} s | {one / two:.2f}× |\n\n"
                "The compile already uses every core (`make -j$(nproc)`), so two builds at once "
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
                    report = load_testing.retest_image(
                        self.podman,
                        KernelModuleStore(self.podman, self.work / "kernels"),
                        registry,
                        cfg,
                        target,
                        target.image,
                        self.work / "lt",
                        log,
                        WorkerTools(self.podman, self.project.dockerfile, self.work / "kernels"),
                    )
                assert report.passed, report
                reports.append(report)
            seconds = [r.seconds for r in reports]
            initramfs = reports[-1].initramfs_bytes
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
                f"{toolkit_mb:.0f} MB |"
            )
        self.results.sections.append(
            (
                "4. Load test (qemu, TCG, no KVM)",
                "`invoke load-test --kernel K` (n = 3 per kernel): export, initramfs from the "
                "image plus the node's in-tree dependencies, boot, load both modules, verdict. "
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
                "image size (n = 1 each: sizes do not vary between runs). The toolkit image "
                "carries the kernel's headers and modules and is never shipped.\n\n"
                "| kernel | compressed | uncompressed | toolkit image |\n"
                "| --- | --- | --- | --- |\n" + "\n".join(size_rows) + "\n",
            )
        )

    # -- 7. the library page ----------------------------------------------------------------

    def _invoke(self, task: str, versions: Path, *extra: str) -> tuple[float, int, str]:
        """`invoke <task>` as a user runs it: wall seconds, HTTP requests it reports, output."""
        assert self.front is not None
        env = {
            "HABANA_CACHE_DIR": str(self.work / "site-cache"),
            "REQUESTS_CA_BUNDLE": str(self.front.ca),
        }
        invoke = str(Path(sys.executable).parent / "invoke")
        started = time.perf_counter()
        done = self.runner.run(
            [invoke, task, "--versions", str(versions), *extra],
            cwd=self.project.root, env=env, keep_output=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        found = re.findall(r"(\d+) HTTP request", done.text)
        assert found and done.returncode in (0, 4), done.output[-10:]
        return wall, int(found[0]), done.text

    def _chromium(self, uri: str) -> float:
        """Seconds for headless Chromium to load and lay out a page (its DOM dumped)."""
        profile = self.work / "chromium-profile"
        started = time.perf_counter()
        self.runner.run(
            ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
             f"--user-data-dir={profile}", "--dump-dom", uri],
            env={"HOME": str(profile)}, keep_output=True,
        )  # fmt: skip
        return time.perf_counter() - started

    def library_page(self) -> None:
        """`invoke site` over the example (section 2's) and the synthetic 201 and 2,001-pair
        libraries (section 1's): its wall time, the page's size, the requests it makes against
        `status`'s, and Chromium's time to draw it (about:blank's subtracted)."""
        assert self.front is not None
        self.front.delay = 0.0
        cases = [("example", self.versions_file("k3-warm", BUILD_KERNELS))]
        for kernels in REFRESH_KERNELS[1:]:
            names = [f"6.1.0-{1000 + i}-amd64" for i in range(kernels)]
            cases.append(
                (
                    f"{kernels * len(DRIVERS)} pairs",
                    self.versions_file(f"refresh-{kernels}", names, front=True),
                )
            )
        blank = statistics.median(self._chromium("about:blank") for _ in range(3))
        rows = []
        for name, versions in cases:
            self._invoke("status", versions)  # the caches warm, as for the daily job
            out = self.work / f"site-{name.replace(' ', '-')}"
            self.front.reset()
            wall, requests, _ = self._invoke("site", versions, "--output", str(out))
            site_reads = dict(self.front.reads)
            self.front.reset()
            _, status_requests, _ = self._invoke("status", versions)
            status_reads = dict(self.front.reads)
            page = out / "index.html"
            drawn = statistics.median(self._chromium(page.as_uri()) for _ in range(3)) - blank
            size = page.stat().st_size
            # Through the front, parallel workers race for their first token, so the tool's
            # total varies run to run; what the registry was asked for past authentication
            # does not. The example is served without authentication: its totals compare.
            same = site_reads == status_reads if site_reads else requests == status_requests
            self.results.data[f"site_{name}"] = {
                "wall": wall, "bytes": size, "requests": requests,
                "status_requests": status_requests, "reads": sum(site_reads.values()),
                "status_reads": sum(status_reads.values()), "same_reads": same,
                "chromium": drawn,
            }  # fmt: skip
            reads = (
                f"{sum(site_reads.values())} / {sum(status_reads.values())}" if site_reads else "–"
            )
            rows.append(
                f"| {name} | {wall:.2f} s | {size / 1e6:.2f} MB | {requests} / {status_requests} "
                f"| {reads} | {'yes' if same else 'no'} | {drawn:.2f} s |"
            )
        self.results.sections.append(
            (
                "7. The library page",
                "`invoke site` as a user runs it (warm caches, as the daily job), n = 1; "
                "requests as the tool counts them (token grants included), against `invoke status` "
                "on the same library; reads: what the registry served past authentication (site / "
                "status) and whether both asked for the same manifests and blobs; "
                "Chromium: headless, the page loaded from file:// and its DOM dumped, median of "
                f"3 minus about:blank's ({blank:.2f} s, the browser's own start).\n\n"
                "| library | invoke site | page | requests (site / status) | reads (site / status) "
                "| same reads | Chromium |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n",
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
        """Each goal of the brief, met or missed by how much and what bounds it, from this run."""
        d = self.results.data
        latency = LATENCIES[-1]
        far = d[refresh_key(REFRESH_PAIRS_MAX, latency)]
        mid_far = d[refresh_key(REFRESH_KERNELS[1] * len(DRIVERS), latency)]
        pairs = far["pairs"]

        def med(runs: list[dict[str, float]], key: str = "wall") -> float:
            return statistics.median(r[key] for r in runs)

        warm, cold = med(far["warm_runs"]), med(far["cold_runs"])
        seq, par = med(far["a_runs"]), med(far["b_runs"])
        rpp = far["requests_per_pair"]
        rss = max(r["rss_mb"] for r in far["warm_runs"] + far["cold_runs"])
        warm_mid = med(mid_far["warm_runs"])
        near = d[refresh_key(REFRESH_KERNELS[0] * len(DRIVERS), latency)]
        smoke_key = max(
            (k for k in d if k.startswith("smoke_")),
            key=lambda k: statistics.median(d[k]["seconds"]),
        )
        smoke = statistics.median(d[smoke_key]["seconds"])

        def row(goal: str, measured: str, met: bool, bound: str = "") -> str:
            return f"| {goal} | {measured} | {'met' if met else '**missed**'} | {bound} |"

        def at_most(
            goal: str, measured: str, value: float, limit: float, excess: str, bound: str
        ) -> str:
            """A ceiling goal; when missed, by how much (`excess` formats it) and what bounds it."""
            met = value <= limit
            return row(
                goal,
                measured,
                met,
                "" if met else f"missed by {excess.format(value - limit)}; {bound}",
            )

        def time_bound(kind: str) -> str:
            runs = far[f"{kind}_runs"]
            requests = med(runs, "requests")
            floor = requests * latency / LOOKUP_CONCURRENCY
            return (
                f"bounded by {requests:.0f} requests × {latency * 1000:.0f} ms / "
                f"{LOOKUP_CONCURRENCY} at a time = {floor:.1f} s, "
                f"plus {med(runs, 'cpu'):.1f} s of CPU in one Python process (TLS, HTTP, JSON; "
                f"interpreter start) and {med(runs, 'front_cpu'):.1f} s in the registry front, "
                f"on the same {os.cpu_count()} cores"
            )

        request_bound = (
            f"bounded by one manifest request per image plus one toolkit lookup per kernel: "
            f"{1 + 1 / len(DRIVERS):.2f} per pair with {len(DRIVERS)} drivers per kernel"
        )
        cold_request_bound = (
            "bounded by one manifest per image (its annotations carry the labels, so no config "
            f"blob is read), plus one toolkit lookup per kernel: {1 + 1 / len(DRIVERS):.2f} per "
            "pair, and the token and package requests of a cold start"
        )
        fixed_bound = (
            f"the {near['pairs']}-pair library takes {med(near['warm_runs']):.2f} s warm at the "
            f"same latency: the fixed cost of any run (interpreter start, imports, versions file, "
            f"plan and table), plus {med(mid_far['warm_runs'], 'cpu'):.1f} s of CPU at "
            f"{mid_far['pairs']} pairs"
        )
        smoke_bound = (
            f"{smoke_key.removeprefix('smoke_')}: the guest's time under qemu without KVM "
            f"(TCG): unpacking a {d[smoke_key]['initramfs'] / 1e6:.0f} MB initramfs and "
            "booting the stock kernel before loading two modules"
        )
        cache = d["compile_cache"]
        slowest = max(cache["hit"]["phases"], key=lambda phases: sum(phases.values()))
        cache_bound = "bounded by " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in slowest.items()
        )
        rows = [
            at_most(
                f"{pairs} pairs, {latency * 1000:.0f} ms, TLS + token: warm ≤ 3 s",
                f"{warm:.2f} s (n={len(far['warm_runs'])})",
                warm, 3, "{:.1f} s", time_bound("warm"),
            ),
            at_most(
                "… cold ≤ 6 s",
                f"{cold:.2f} s (n={len(far['cold_runs'])})",
                cold, 6, "{:.1f} s", time_bound("cold"),
            ),
            row(
                "… ≥ 20× faster than (a) sequential skopeo (warm)",
                f"{seq / warm:.0f}× ({seq:.0f} s, n={len(far['a_runs'])})",
                seq / warm >= 20,
            ),
            row(
                "… ≥ 4× faster than (b) skopeo with xargs -P 16 (warm)",
                f"{par / warm:.1f}× ({par:.1f} s, n={len(far['b_runs'])})",
                par / warm >= 4,
                "" if par / warm >= 4 else time_bound("warm"),
            ),
            at_most(
                "warm requests per pair ≤ 1.1",
                f"{rpp['warm']:.2f}",
                rpp["warm"], 1.1, "{:.2f}", request_bound,
            ),
            at_most(
                "cold requests per pair ≤ 2.1",
                f"{rpp['cold']:.2f}",
                rpp["cold"], 2.1, "{:.2f}", cold_request_bound,
            ),
            at_most(
                f"{mid_far['pairs']} pairs warm ≤ 1 s wall ({latency * 1000:.0f} ms)",
                f"{warm_mid:.2f} s",
                warm_mid, 1, "{:.2f} s", fixed_bound,
            ),
            row(f"peak RSS at {pairs} pairs ≤ 150 MB", f"{rss:.0f} MB", rss <= 150),
            at_most(
                "a pair rebuilt from the compile cache ≤ 15 s, load test included",
                f"{cache['per_pair_hit']:.1f} s (worst pair)",
                cache["per_pair_hit"], 15, "{:.1f} s", cache_bound,
            ),
            *(row(*goal) for goal in self._page_goals()),
            at_most(
                "load test ≤ 10 s per image (reference)",
                f"{smoke:.1f} s (worst median)",
                smoke, 10, "{:.1f} s", smoke_bound,
            ),
        ]  # fmt: skip
        return (
            f"From this run (`nox -s bench`, {seconds / 60:.1f} min). Ratios use the warm run "
            "(the daily job); cold figures are in section 1.\n\n"
            "| goal | measured | result | what bounds it |\n"
            "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
        )

    def _page_goals(self) -> list[tuple[str, str, bool]]:
        """The library page's goals from section 7: (goal, measured, met)."""
        page = self.results.data.get(f"site_{REFRESH_PAIRS_MAX} pairs")
        if page is None:
            return []
        asked = f"{page['reads']} / {page['status_reads']}, the same: {page['same_reads']}"
        return [
            (f"the {REFRESH_PAIRS_MAX}-pair page drawn in ≤ 2 s", f"{page['chromium']:.2f} s",
             page["chromium"] <= 2),
            ("… and ≤ 2 MB", f"{page['bytes'] / 1e6:.2f} MB", page["bytes"] <= 2e6),
            ("… no read beyond status's (site / status)", asked, page["same_reads"]),
        ]  # fmt: skip

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


def _phases(log: Path, compile_seconds: float) -> dict[str, float]:
    """Seconds of each stage of a job, from its log's `==> stage` marks; the build stage split
    into the compile (its record's seconds) and the assembly."""
    marks: list[tuple[float, str]] = []
    last = 0.0
    for line in log.read_text().splitlines():
        if match := re.match(r"^\[\s*([0-9.]+)\] (==> )?(.*)$", line):
            last = float(match.group(1))
            if match.group(2):
                marks.append((last, match.group(3)))
    spans = {name: end - start for (start, name), (end, _) in
             itertools.pairwise([*marks, (last, "")])}  # fmt: skip
    build = spans.pop("build", 0.0)
    return {
        "compile": compile_seconds,
        "assembly": max(0.0, build - compile_seconds),
        "checks": spans.get("check", 0.0),
        "load test": spans.get("load test", 0.0),
        "push": spans.get("push", 0.0) + spans.get("verify", 0.0),
    }


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
            ("compile cache", bench.compile_cache),
            ("library page", bench.library_page),
        )
        for name, step in steps:
            console.print(f"bench: {name}")
            step()
            # Kept as each section ends: a failure later does not lose what was measured.
            (work / "partial.json").write_text(
                json.dumps({"sections": bench.results.sections, "data": bench.results.data},
                           indent=2, default=str)
            )  # fmt: skip
            console.print(f"bench: {name} measured (kept in {work / 'partial.json'})")
    finally:
        bench.stop()
    path = bench.write(time.perf_counter() - started)
    console.print(f"wrote {path}")
    return path
