"""The library page as people see it: `invoke site` over the example library (one pair current,
one missing, one stale), rendered by headless Chromium (Debian's package) from file:// with no
network: the screenshot is not blank, the DOM holds every pair with its state, and the page
made no more registry requests than `status` does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.errors import NOT_READY
from tests.conftest import ROOT, invoke_argv, require_tools
from tests.integration.conftest import requests_reported

pytestmark = [pytest.mark.integration]
CHROMIUM = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions"]


def chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Chromium with a profile of its own (and no sandbox: the tests may run as root)."""
    binary = shutil.which("chromium") or "chromium"
    return subprocess.run(
        [binary, *CHROMIUM, f"--user-data-dir={home}", *args],
        capture_output=True, text=True, check=True, timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
    )  # fmt: skip


def invoke_on(library: tuple[Project, Path], *args: str) -> subprocess.CompletedProcess[str]:
    """`invoke <args> --versions <the library's file>`, with the library's cache."""
    project, versions = library
    return subprocess.run(
        invoke_argv(*args, "--versions", str(versions)),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "HABANA_CACHE_DIR": str(project.cache)},
    )  # fmt: skip


def test_the_page_shows_every_pair_and_its_state_in_a_browser(
    library: tuple[Project, Path], tmp_path: Path
) -> None:
    require_tools("chromium")
    _, versions = library
    text = versions.read_text()
    # A third pair that is not in the library: missing.
    versions.write_text(text + '\n[[kernels]]\nrelease = "6.1.0-57-amd64"\ndrivers = ["6.1.0-1"]\n')
    out = tmp_path / "site"
    invoke_on(library, "status")  # the caches warm, as for the page's run
    done = invoke_on(library, "site", "--output", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    # No request beyond what `status` makes for the same library.
    counts = [requests_reported(r.stdout) for r in (done, invoke_on(library, "status"))]
    assert counts[0] == counts[1], counts
    page = out / "index.html"
    dom = chromium("--dump-dom", page.as_uri(), home=tmp_path / "profile").stdout
    for target in versions_file.load(versions).targets:
        assert target.kernel in dom
    assert dom.count('class="cell current"') == 2 and dom.count('class="cell missing"') == 1
    shots = {}
    for name, uri in (("page", page.as_uri()), ("blank", "about:blank")):
        shots[name] = tmp_path / f"{name}.png"
        chromium(f"--screenshot={shots[name]}", "--window-size=1280,900", uri,
                 home=tmp_path / "profile")  # fmt: skip
    png, blank = shots["page"].read_bytes(), shots["blank"].read_bytes()
    # A blank window compresses to almost nothing; tables, text and colours do not.
    assert png.startswith(b"\x89PNG") and len(png) > 5 * len(blank), (len(png), len(blank))


def test_the_page_shows_the_coverage_of_the_given_nodes(
    library: tuple[Project, Path], tmp_path: Path
) -> None:
    """--nodes: what preflight answers for each node, on the page; the exit code is preflight's."""
    nodes = tmp_path / "nodes.json"
    kernels = {"worker-1": "6.1.0-55-amd64", "worker-2": "6.1.0-99-amd64"}
    nodes.write_text(
        json.dumps({"items": [
            {"metadata": {"name": name},
             "status": {"nodeInfo": {"kernelVersion": kernel, "architecture": "amd64"}}}
            for name, kernel in kernels.items()
        ]})
    )  # fmt: skip
    out = tmp_path / "site"
    invoke_on(library, "status")  # the caches warm, as for the page's run
    done = invoke_on(library, "site", "--output", str(out), "--nodes", str(nodes))
    assert done.returncode == NOT_READY, done.stdout + done.stderr  # worker-2 is not covered
    # The coverage is answered from the state status resolved: no request beyond status's.
    counts = [requests_reported(r.stdout) for r in (done, invoke_on(library, "status"))]
    assert counts[0] == counts[1], counts
    page = (out / "index.html").read_text()
    row = '<td>node {}</td><td>{}</td><td>6.1.0-1</td><td class="{}">{}</td>'
    assert row.format("worker-1", kernels["worker-1"], "current", "covered") in page
    not_covered = row.format("worker-2", kernels["worker-2"], "failing", "not covered")
    assert not_covered + "<td>kernel not in versions.toml</td>" in page
