"""Sections 2 to 6 of `nox -s bench`: builds cold and warm, parallelism, the load test and image
sizes, and the compile cache."""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from devtools import local_upstream
from devtools.bench_base import (
    BUILD_KERNELS,
    LOG_LINE_RE,
    PHASES,
    STEP_RE,
    BenchBase,
    spread,
)
from habana_tasks.build.service import BuildOptions
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.registry.client import RegistryClient
from habana_tasks.verification import load_testing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.worker import WorkerTools


class BuildSections(BenchBase):
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
        cfg = versions_file.load(versions)
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

    # -- 4. load test, 5. sizes ---------------------------------------------------------------

    def load_test_and_sizes(self) -> None:
        versions = self.versions_file("k3-warm", BUILD_KERNELS)  # built in section 2
        cfg = versions_file.load(versions)
        registry = RegistryClient(cfg.insecure_registries)
        load_test_rows, size_rows = [], []
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
            row = f"| {target.kernel} | {spread(seconds)} | {initramfs / 1e6:.0f} MB |"
            load_test_rows.append(row)
            self.results.data[f"load_test_{target.kernel}"] = {
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
                + "\n".join(load_test_rows)
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
        if match := LOG_LINE_RE.match(line):
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
