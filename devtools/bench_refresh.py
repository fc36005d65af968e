"""Section 1 of `nox -s bench`: a no-op refresh (every pair current) at 21, 201 and 2,001 pairs,
on loopback and at a remote registry's latency, against skopeo inspecting each image."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from devtools.bench_base import (
    DRIVERS,
    LATENCIES,
    REFRESH_KERNELS,
    REFRESH_PAIRS_MAX,
    REFRESH_RUNS,
    BenchBase,
    refresh_key,
    spread,
)
from habana_tasks.build.metadata import LOOKUP_THREADS as LOOKUP_CONCURRENCY
from habana_tasks.config import versions_file


class RefreshSection(BenchBase):
    # -- 1. no-op refresh ------------------------------------------------------------------

    def refresh(self) -> None:
        assert self.front is not None
        rows: list[str] = []
        curve: list[tuple[int, float, float, float]] = []
        for kernels in REFRESH_KERNELS:
            versions = self.synthetic_library(kernels)
            cfg = versions_file.load(versions)
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
