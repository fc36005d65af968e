"""`invoke matrix`: pending pairs in at most N batches, one kernel's pairs together; planned from a
synthetic versions file against the fake registry (the real one: tests/integration)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from habana_tasks.build import metadata
from habana_tasks.build.driver_package import DriverSource
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core.errors import UsageError
from habana_tasks.maintenance.matrix import Batch, batches, github_matrix, markdown_plan
from habana_tasks.maintenance.status import State, TargetStatus
from habana_tasks.registry.manifests import OCI_MANIFEST
from tests.conftest import ROOT
from tests.fake_registry import FakeRegistry

DRIVERS = ("6.1.0-1", "6.1.0-2", "6.1.0-3")


def pending(kernel: str, tag: str, state: State = State.MISSING) -> TargetStatus:
    return TargetStatus(kernel, "6.1.0-1", tag, f"r.example/lib:{tag}", state, "why")


def synthetic_library(fake: FakeRegistry, tmp_path: Path, pairs: int) -> Path:
    """`pairs` pairs over kernels of three drivers each (the last kernel takes the rest), every
    toolkit in the fake registry, the library repository empty: every pair is pending."""
    for driver in DRIVERS:
        (tmp_path / f"habanalabs-{driver}.rpm").write_bytes(driver.encode())
    entries, left, n = [], pairs, 0
    while left:
        drivers = DRIVERS[: min(3, left)]
        kernel = f"6.1.0-{1000 + n}-amd64"
        fake.add_image("dtk", kernel, {}, OCI_MANIFEST)
        entries.append(f'[[kernels]]\nrelease = "{kernel}"\ndrivers = {json.dumps(drivers)}\n')
        left -= len(drivers)
        n += 1
    path = tmp_path / "versions.toml"
    url = (tmp_path / "habanalabs-{driver}.rpm").as_uri().replace("%7B", "{").replace("%7D", "}")
    path.write_text(
        f'[library]\nrepository = "{fake.host}/library/driver"\n'
        f'insecure_registries = ["{fake.host}"]\n'
        f'[toolkit]\nimage = "{fake.host}/dtk:{{kernel}}"\n'
        f'[driver]\npackage_url = "{url}"\n' + "".join(entries)
    )
    return path


@pytest.mark.parametrize(("pairs", "max_jobs"), [(21, 256), (201, 256), (2001, 256), (201, 40)])
def test_pending_pairs_fit_the_matrix_each_in_exactly_one_batch(
    fake: FakeRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pairs: int,
    max_jobs: int,
) -> None:
    monkeypatch.setattr(
        metadata, "read_driver_source", lambda path, version, name=None: DriverSource("abcdef1")
    )
    versions = synthetic_library(fake, tmp_path, pairs)
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    matrix = json.loads(commands.matrix(project, str(versions), max_jobs=max_jobs))
    jobs = matrix["include"]
    targets = versions_file.load(versions).targets
    kernels = {t.kernel for t in targets}
    assert len(jobs) == min(max_jobs, len(kernels))
    chosen = [tag for job in jobs for tag in job["only"].split(",")]
    assert Counter(chosen) == Counter(t.tag for t in targets)  # every pair exactly once
    kernel_of = {t.tag: t.kernel for t in targets}
    for job in jobs:
        assert job["pairs"] == len(job["only"].split(","))
        assert {kernel_of[tag] for tag in job["only"].split(",")} == set(job["kernels"].split())
    # A kernel's pairs are never split over jobs; jobs differ by at most one kernel's pairs.
    covered = [k for job in jobs for k in job["kernels"].split()]
    assert sorted(covered) == sorted(kernels)
    sizes = [job["pairs"] for job in jobs]
    assert max(sizes) - min(sizes) <= len(DRIVERS)
    # actions/cache: a key of at most 512 characters, no comma, one per batch.
    keys = [job["cache_key"] for job in jobs]
    assert len(set(keys)) == len(jobs)
    assert all(len(f"compile-{k}-12345678901") <= 512 and "," not in k for k in keys)


def test_a_kernel_with_many_pairs_stays_whole_and_the_rest_balance() -> None:
    items = [pending("big", f"1.{i}-big") for i in range(10)]
    items += [pending(f"k{i}", f"1.0-k{i}") for i in range(10)]
    items += [pending("current", "1.0-current", State.CURRENT)]
    items += [pending("held", "1.0-held", State.FAILING)]
    found = batches(items, 2)
    assert [len(b.tags) for b in found] == [10, 10]
    assert found[0].kernels == ("big",)
    assert "1.0-current" not in found[1].tags and "1.0-held" not in found[1].tags
    assert batches(items, 256)[0].kernels == ("big",) and len(batches(items, 256)) == 11
    assert batches([], 256) == ()


def test_a_batch_too_long_for_one_argument_is_refused_with_the_way_out() -> None:
    batch = Batch(("k",), tuple(f"1.0-{i:04d}-k" for i in range(100)))
    with pytest.raises(UsageError, match=r"would pass 1099 characters to --only \(at most 1000\)"):
        github_matrix([batch], 1000)


def test_the_markdown_plan_names_each_job_and_the_pairs_held() -> None:
    items = [
        pending("k1", "1.0-k1"),
        TargetStatus("k2", "1.0", "1.0-k2", "x", State.STALE, "toolkit image digest | changed"),
        TargetStatus("k3", "1.0", "1.0-k3", "x", State.FAILING, "failed before ... (2026-12-02)"),
    ]
    text = markdown_plan(items, batches(items, 256))
    assert text.startswith("## Plan: 2 pending pair(s) in 2 job(s), 1 held\n")
    assert "| 1 | `k1` | 6.1.0-1 | missing |" in text
    assert "| 2 | `k2` | 1.0 | toolkit image digest \\| changed |" in text
    assert "| `k3` | 1.0 | failed before ... (2026-12-02) |" in text


def test_debian_13_releases_go_through_the_matrix_as_they_are() -> None:
    """`+` in a release: the job's name and kernels keep it (build-all takes the release), the
    tags have `_`, and a batch of many such kernels still has a short cache key."""
    kernels = [f"6.12.{100 + i}+deb13-{f}" for i in range(60) for f in ("amd64", "rt-amd64")]
    items = [pending(k, "6.12.0-1-" + k.replace("+", "_")) for k in kernels]
    (batch,) = batches(items, 1)
    (job,) = json.loads(github_matrix((batch,), 100_000))["include"]
    assert job["name"] == "6.12.100+deb13-amd64 +119 kernel(s): 120 pair(s)"
    assert set(job["kernels"].split()) == set(kernels)
    assert "+" not in job["only"] and len(job["only"].split(",")) == 120
    assert len(job["cache_key"]) < 200 and job["cache_key"].startswith("6.12.100+deb13-amd64-120-")
    again = batches(list(reversed(items)), 1)[0]
    assert again.cache_key == batch.cache_key  # the same kernels, the same key
