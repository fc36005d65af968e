"""`nox -s bench`: the library pipeline against the per-image way, measured in one run.

Every figure is written to docs/benchmarks.md (and benchmarks.json) with its setup, its
baseline measured in the same run, and the command that reproduces it. No goal here is a test.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from rich.console import Console

from devtools.bench_base import (
    DRIVERS,
    LATENCIES,
    REFRESH_KERNELS,
    REFRESH_PAIRS_MAX,
    refresh_key,
)
from devtools.bench_builds import BuildSections
from devtools.bench_page import PageSection
from devtools.bench_refresh import RefreshSection
from devtools.bench_rootless import GOAL_RATIO, RootlessSection
from habana_tasks.build.metadata import LOOKUP_THREADS as LOOKUP_CONCURRENCY
from habana_tasks.config.project import Project


class Bench(RefreshSection, BuildSections, PageSection, RootlessSection):
    """Every section, and the report made of them."""

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
        load_test_key = max(
            (k for k in d if k.startswith("load_test_")),
            key=lambda k: statistics.median(d[k]["seconds"]),
        )
        load_test = statistics.median(d[load_test_key]["seconds"])

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
        load_test_bound = (
            f"{load_test_key.removeprefix('load_test_')}: the guest's time under qemu without KVM "
            f"(TCG): unpacking a {d[load_test_key]['initramfs'] / 1e6:.0f} MB initramfs and "
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
                "an ordinary user's cache-hit pair ≤ 2× root's (rootless podman)",
                f"{d['rootless']['ratio_hit']:.2f}× ({d['rootless']['driver']} storage)",
                d["rootless"]["ratio_hit"], GOAL_RATIO, "{:.2f}×",
                "rootless podman's user namespace and storage driver",
            ),
            at_most(
                "load test ≤ 10 s per image (reference)",
                f"{load_test:.1f} s (worst median)",
                load_test, 10, "{:.1f} s", load_test_bound,
            ),
        ]  # fmt: skip
        return (
            f"From this run (`nox -s bench`, {seconds / 60:.1f} min). Ratios use the warm run "
            "(the daily job); cold figures are in section 1.\n\n"
            "| goal | measured | result | what bounds it |\n"
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
            ("load test and sizes", bench.load_test_and_sizes),
            ("compile cache", bench.compile_cache),
            ("library page", bench.library_page),
            ("root and rootless", bench.rootless),
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
