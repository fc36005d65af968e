"""A second kernel generation, end to end through the real registry and podman: a Debian 13
kernel (6.12.<n>+deb13, gcc 14, `+` in its release) whose toolkit the local upstream makes on
demand, the example driver's second generation (Linux 6.12's drivers/accel/habanalabs, a
dkms.conf restricting it to Debian 13's kernels), and the kernel's own `habanalabs`:

- the plan refuses the 6.12 driver on a Debian 12 kernel before compiling, naming the rule;
- the Debian 13 pair is built (tag with `_` for `+`, toolkit by {kernel_tag}), its image checked
  (modprobe resolves its modules to the image's own files, not the kernel's namesake) and
  load-tested in that exact kernel, and it records the kernel's own module it replaces;
- the KMM Module removes that module for exactly that kernel, valid against KMM's CRD;
- the load test plays a node with the card: the kernel's own module loaded first (udev), the
  worker's removal, and the kernel's word that the module then loaded is the image's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools import local_upstream, vendor_packages
from habana_tasks.build import failure_records, labels
from habana_tasks.cli import maintenance_commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.verification import load_testing
from habana_tasks.verification.kernel_modules import KernelModuleStore
from habana_tasks.verification.worker import WorkerTools
from tests.conftest import ROOT, invoke_argv, require, require_tools
from tests.integration.conftest import KERNELS, UpstreamFixture
from tests.keys import make_pair
from tests.kmm_schema import schema_errors

pytestmark = pytest.mark.integration
TRIXIE = "6.12.117+deb13-amd64"
TRIXIE_RT = "6.12.117+deb13-rt-amd64"
SECOND = "6.12.0-1"


@pytest.fixture(scope="module")
def second(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library of the Debian 13 kernel and a Debian 12 one, both drivers offered to both."""
    require(vendor_packages.GENERATION_6_12.tarball.exists(), "linux-source-6.12 (install-deps)")
    u = test_upstream.upstream
    local_upstream.ensure_toolkit_image(u, Podman(test_upstream.runner), TRIXIE)
    vendor_packages.build_driver_rpm(u, test_upstream.runner, SECOND)
    versions = test_upstream.versions(
        tmp_path_factory.mktemp("second") / "versions.toml",
        (TRIXIE, KERNELS[0]),
        repository="library/second",
    )
    versions.write_text(
        versions.read_text().replace('drivers = ["6.1.0-1"]', f'drivers = ["{SECOND}"]')
    )
    return versions


def build(versions: Path, cache: Path, kernel: str) -> tuple[int, str]:
    done = subprocess.run(
        invoke_argv("build", "--kernel", kernel, "--versions", str(versions)),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache)},
    )  # fmt: skip
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_the_second_generations_driver_is_refused_on_the_first_before_compiling(
    second: Path, tmp_path: Path
) -> None:
    code, out = build(second, tmp_path / "cache", KERNELS[0])
    assert code == 3, out
    (entry,) = json.loads(Path(out.rsplit("report: ", 1)[1].split()[0]).read_text())
    assert entry["failure"]["step"] == "driver package"
    assert entry["failure"]["why"] == (
        f"driver {SECOND} is not built for {KERNELS[0]}: its dkms.conf builds only for a kernel "
        'matching BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-", and '
        f"{KERNELS[0]} does not match (DKMS skips it)"
    )
    assert entry["compiled"] is None  # refused before anything was compiled


def test_a_debian_13_pair_is_built_proven_and_mapped_replacing_the_kernels_own_driver(
    second: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    code, out = build(second, tmp_path / "cache", TRIXIE)
    assert code == 0, out
    assert "replaces the kernel's own habanalabs" in out
    (target,) = versions_file.load(second).select(TRIXIE, SECOND)
    assert target.tag == "6.12.0-1-6.12.117_deb13-amd64"
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert remote.existence is Existence.PRESENT
    assert remote.labels[labels.KERNEL] == TRIXIE
    assert remote.labels[labels.IN_TREE_REPLACED] == "habanalabs"
    assert remote.labels[labels.LOAD_TESTED] == "plain"
    project = Project(ROOT, cache_dir=tmp_path / "cache")
    module = yaml.safe_load(maintenance_commands.kmm_module(project, SECOND, str(second)))
    assert schema_errors(module) == []
    (mapping,) = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert mapping == {
        "literal": TRIXIE,
        "containerImage": f"{target.repository}@{remote.digest}",
        "inTreeModulesToRemove": ["habanalabs"],
    }


def test_the_load_test_plays_a_node_with_the_card_and_proves_the_images_module_replaced_it(
    second: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """`invoke load-test` pulls the pushed Debian 13 image and boots its kernel as a node with
    the card: udev loads the kernel's own habanalabs first; the worker removes it (the image's
    label, as the Module's inTreeModulesToRemove) and loads the image's, which the kernel marks
    out of tree. The same image without the removal fails, naming the kernel's module."""
    code, out = build(second, tmp_path / "cache", TRIXIE)
    assert code == 0, out
    done = subprocess.run(
        invoke_argv("load-test", "--kernel", TRIXIE, "--versions", str(second)),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=900,
        env={**os.environ, "HABANA_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, said
    (entry,) = json.loads(Path(said.rsplit("report: ", 1)[1].split()[0]).read_text())
    assert entry["passed"] and entry["reason"] == "loaded, replacing the kernel's own habanalabs"
    proof = "\n".join(entry["evidence"])
    assert "udev loaded the node's /lib/modules/" + TRIXIE in proof
    assert "kernel/drivers/accel/habanalabs/habanalabs.ko" in proof
    assert "node's own habanalabs loaded (taint '')" in proof
    assert "worker removed the in-tree habanalabs" in proof
    assert "image's habanalabs loaded: the kernel marks it out-of-tree (taint O" in proof

    (target,) = versions_file.load(second).select(TRIXIE, SECOND)
    podman = Podman(test_upstream.runner)
    kernels = tmp_path / "kernels"
    config = versions_file.load(second)
    with (tmp_path / "without.log").open("w") as log:
        kept = load_testing.retest_image(
            podman,
            KernelModuleStore(podman, kernels),
            RegistryClient(config.insecure_registries),
            config,
            target,
            target.image,
            tmp_path / "without",
            log,
            WorkerTools(podman, ROOT / "Dockerfile", kernels),
        )  # a Module without inTreeModulesToRemove
    assert not kept.passed
    assert kept.reason == (
        "the habanalabs loaded is the kernel's own (in-tree, taint ''), not the image's: it was "
        "loaded before KMM's modprobe, which then did nothing"
    ), kept.reason
    assert any("udev loaded the node's" in line for line in kept.evidence), kept.evidence


def test_a_signed_debian_13_pair_loads_on_a_secure_boot_node_replacing_the_kernels_own(
    second: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """The Debian 13 kernel boots the same chain as Debian 12's (firmware, Debian's shim and
    GRUB, the library's certificate enrolled as the machine-owner key): its configuration lets
    machine-owner keys sign modules, so the plan lets the pair through, and a signing library's
    build proves it on that node, the kernel's own habanalabs replaced under lockdown."""
    require_tools("openssl")
    pair = make_pair(tmp_path / "keys", "habana library signing key")
    versions = tmp_path / "signed.toml"
    versions.write_text(
        second.read_text().replace("library/second", "library/second-signed")
        + f'\n[signing]\ncertificate = "{pair.certificate}"\nkey = "{pair.key}"\n'
    )
    code, out = build(versions, tmp_path / "cache", TRIXIE)
    assert code == 0, out
    (target,) = versions_file.load(versions).select(TRIXIE, SECOND)
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert remote.labels[labels.LOAD_TESTED] == "secure-boot"
    assert remote.labels[labels.SIGNING] == "signed"
    (log,) = (tmp_path / "cache" / "logs").glob(f"*/{target.tag}.log")
    console = log.read_text()
    assert "Secure boot enabled" in console or "secureboot: Secure boot enabled" in console
    assert "worker removed the in-tree habanalabs" in console
    assert "image's habanalabs loaded: the kernel marks it out-of-tree (taint O)" in console


def test_a_failing_debian_13_pair_is_remembered_under_its_tag_and_held(
    test_upstream: UpstreamFixture, second: Path, tmp_path: Path
) -> None:
    """The first generation's driver on a Debian 13 kernel cannot compile (its uapi header is
    not where 6.12 looks): the pair fails as its own, its record is pushed under the `_` tag,
    and the next run holds the `+` release's pair without compiling."""
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (TRIXIE,), repository="library/second-fails"
    )
    code, out = build(versions, tmp_path / "cache", TRIXIE)
    assert code == 3, out
    (target,) = versions_file.load(versions).targets
    registry = RegistryClient([test_upstream.upstream.registry])
    held = failure_records.read_records(registry, target.repository, [target.tag])[target.tag]
    assert held is not None and "habanalabs.h" in held.cause, held
    assert failure_records.record_tag(target.tag) == "failed-6.1.0-1-6.12.117_deb13-amd64"
    code, out = build(versions, tmp_path / "cache", TRIXIE)
    assert code == 0 and "1 held" in out and "failed before with the same inputs (" in out, out


def test_debian_13s_rt_flavour_is_made_on_demand_and_served_like_the_generic_one(
    test_upstream: UpstreamFixture, second: Path, tmp_path: Path
) -> None:
    """Debian 13 publishes -rt (and -cloud) kernels too: the local upstream makes the toolkit
    of any flavour a versions file names, and the rt kernel, which ships its own habanalabs
    too, gets an image that replaces it, proven in that kernel (`second`: the driver's RPM)."""
    local_upstream.ensure_toolkit_image(
        test_upstream.upstream, Podman(test_upstream.runner), TRIXIE_RT
    )
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (TRIXIE_RT,), repository="library/second-rt"
    )
    versions.write_text(
        versions.read_text().replace('drivers = ["6.1.0-1"]', f'drivers = ["{SECOND}"]')
    )
    code, out = build(versions, tmp_path / "cache", TRIXIE_RT)
    assert code == 0, out
    (target,) = versions_file.load(versions).targets
    assert target.tag == "6.12.0-1-6.12.117_deb13-rt-amd64"
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert remote.labels[labels.KERNEL] == TRIXIE_RT
    assert remote.labels[labels.IN_TREE_REPLACED] == "habanalabs"
    assert remote.labels[labels.LOAD_TESTED] == "plain"


def invoke(*args: str, cache: Path) -> tuple[int, str]:
    done = subprocess.run(
        invoke_argv(*args), cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache), "COLUMNS": "400"},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_status_preflight_and_the_page_name_the_plus_release_and_what_it_replaces(
    second: Path, tmp_path: Path
) -> None:
    """After the Debian 13 pair is built: status and the page show the real release (with
    `+`) and that its image replaces the kernel's own habanalabs; preflight for nodes running
    it, a newer point release and a Debian 12 kernel asks only for what the package builds
    (and says a kernel no driver builds for gets none)."""
    cache = tmp_path / "cache"
    assert build(second, cache, TRIXIE)[0] == 0
    code, out = invoke("status", "--versions", str(second), "--format", "json", cache=cache)
    assert code in (0, 5), out  # the Debian 12 kernel's pair is refused by the package
    rows = {row["kernel"]: row for row in json.loads(out[out.index("{") :])["targets"]}
    assert rows[TRIXIE]["state"] == "current" and rows[TRIXIE]["replaces"] == ["habanalabs"]
    assert rows[TRIXIE]["tag"] == "6.12.0-1-6.12.117_deb13-amd64"
    nodes = tmp_path / "nodes.json"
    kernels = {"a": TRIXIE, "b": "6.12.118+deb13-amd64", "c": KERNELS[0]}
    info = [{"kernelVersion": k, "architecture": "amd64"} for k in kernels.values()]
    items = [{"metadata": {"name": n}, "status": {"nodeInfo": i}} for n, i in zip(kernels, info)]
    nodes.write_text(json.dumps({"items": items}))
    code, out = invoke(
        "preflight", "--versions", str(second), "--nodes", str(nodes), "--format", "json",
        cache=cache,
    )  # fmt: skip
    answers = {a["origin"]: a for a in json.loads(out[out.index("{") :])["answers"]}
    assert code == 5, out  # node b's kernel has no image yet
    assert answers["node a"]["ok"] and answers["node a"]["detail"] == (
        "ready; replaces the kernel's own habanalabs"
    )
    assert not answers["node b"]["ok"] and "6.12.118+deb13-amd64" in answers["node b"]["action"]
    # This library's only driver refuses Debian 12's kernel: that node gets no driver at all.
    assert answers["node c"]["detail"].startswith(
        "not for this kernel: driver 6.12.0-1 is not built for"
    )
    assert not answers["node c"]["ok"] and "builds for this kernel" in answers["node c"]["action"]
    page = tmp_path / "page"
    code, out = invoke("site", "--versions", str(second), "--output", str(page), cache=cache)
    html = (page / "index.html").read_text()
    assert TRIXIE in html and "replaces the kernel&#x27;s own habanalabs" in html, out
