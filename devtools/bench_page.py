"""Section 7 of `nox -s bench`: the library page (`invoke site`) over the example and the
synthetic libraries, its size, the registry reads it makes against `status`'s, and Chromium's
time to draw it."""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

from devtools.bench_base import (
    BUILD_KERNELS,
    DRIVERS,
    REFRESH_KERNELS,
    REFRESH_PAIRS_MAX,
    BenchBase,
)

# What a command prints of its requests: `… 285 HTTP request(s) …`.
REQUESTS_SENT_RE = re.compile(r"(\d+) HTTP request")


class PageSection(BenchBase):
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
        found = REQUESTS_SENT_RE.findall(done.text)
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
            loaded = statistics.median(self._chromium(page.as_uri()) for _ in range(3))
            drawn = max(0.0, loaded - blank)  # a small page is within the start's own spread
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
                f"3 minus about:blank's ({blank:.2f} s, the browser's own start; a page that "
                "loads within that start's spread shows 0.00 s).\n\n"
                "| library | invoke site | page | requests (site / status) | reads (site / status) "
                "| same reads | Chromium |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n",
            )
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
