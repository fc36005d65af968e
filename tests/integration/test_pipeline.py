"""The whole product path against real parts: docker-registry, podman, rpmbuild RPMs, kmod."""

from __future__ import annotations

import json
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools import vendor_packages
from habana_tasks.build import failure_records, labels
from habana_tasks.build.failure_records import record_tag
from habana_tasks.config import versions_file
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.errors import ConfigError
from habana_tasks.engine.podman import Podman
from habana_tasks.maintenance import prune
from habana_tasks.registry.client import Existence, RegistryClient
from tests.conftest import ROOT, free_port
from tests.integration.conftest import DRIVER, KERNELS, UpstreamFixture, copy_library, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def versions(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A repository of its own: the first test starts from an empty one, whatever ran before.
    path = tmp_path_factory.mktemp("v") / "versions.toml"
    return test_upstream.versions(path, repository="library/pipeline")


def registry_for(test_upstream: UpstreamFixture) -> RegistryClient:
    return RegistryClient([test_upstream.upstream.registry])


Outcome = tuple[int, str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def first_build(project: Project, versions: Path, test_upstream: UpstreamFixture) -> Outcome:
    """The library built from an empty repository, once for the tests that start from it."""
    return run(project, versions, jobs=2)


def test_1_build_all_from_scratch_in_parallel(
    first_build: Outcome, versions: Path, test_upstream: UpstreamFixture
) -> None:
    code, text, report = first_build
    assert code == 0, text
    assert [(r["tag"], r["status"]) for r in report] == [(f"{DRIVER}-{k}", "ok") for k in KERNELS]
    registry = registry_for(test_upstream)
    cfg = versions_file.load(versions)
    for target, result in zip(cfg.targets, report, strict=True):
        remote = registry.inspect(target.image)  # the config blob's labels
        assert remote.existence is Existence.PRESENT
        assert remote.digest == result["digest"]
        got = remote.labels
        assert got[labels.KERNEL] == target.kernel
        assert got[labels.DRIVER] == DRIVER
        # No base: nothing but the driver and the minimal flavour's tools.
        assert "org.opencontainers.image.base.digest" not in got
        assert got["io.habana-ai-driver.image.flavour"] == "minimal"
        assert got["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
        # The same map is the manifest's annotations, which is all a plan reads (buildah adds
        # its version label; the OCI base annotations are empty: there is no base).
        manifest = registry.get_manifest(ImageReference.parse(target.image)).json()
        ours = {k: v for k, v in got.items() if not k.startswith("io.buildah.")}
        assert manifest["annotations"] == {
            **ours,
            "org.opencontainers.image.base.name": "",
            "org.opencontainers.image.base.digest": "",
        }
        assert len(got["org.opencontainers.image.revision"]) == 40
        toolkit = registry.resolve(target.toolkit_image, "x86_64")
        assert got["io.habana-ai-driver.toolkit.digest"] == toolkit.digest
        assert got[labels.FINGERPRINT].startswith("sha256:")
        assert (remote.size or 0) < 5_000_000


def test_2_second_run_builds_and_pushes_nothing(
    first_build: Outcome, project: Project, versions: Path, test_upstream: UpstreamFixture
) -> None:
    registry = registry_for(test_upstream)
    targets = versions_file.load(versions).targets
    before = {t.tag: registry.inspect(t.image).digest for t in targets}
    logs = project.cache / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    code, text, report = run(project, versions)
    assert code == 0, text
    assert [r["status"] for r in report] == ["skipped", "skipped"]
    assert all(r["detail"].startswith("up to date") for r in report)
    assert {t.tag: registry.inspect(t.image).digest for t in targets} == before
    # No job ran, so no job log was written: nothing was built or pushed.
    new_runs = set(logs.iterdir()) - runs_before
    assert [p.name for run_dir in new_runs for p in run_dir.iterdir()] == ["report.json"]


def test_3_new_toolkit_for_one_kernel_rebuilds_only_that_image(
    first_build: Outcome, project: Project, versions: Path, test_upstream: UpstreamFixture
) -> None:
    # A toolkit repository of this test's own, so the shared upstream stays as it was: the
    # same digest for the first kernel, a refreshed one for the second.
    u, runner = test_upstream.upstream, test_upstream.runner
    refreshed = f"{u.registry}/upstream/refreshed-toolkit"
    runner.run(["podman", "tag", u.toolkit_image(KERNELS[0]), f"{refreshed}:{KERNELS[0]}"])
    runner.run(["podman", "push", "--quiet", "--tls-verify=false", f"{refreshed}:{KERNELS[0]}"])
    context = Path(str(versions) + ".toolkit")
    context.mkdir(exist_ok=True)
    (context / "Containerfile").write_text(
        f"FROM {u.toolkit_image(KERNELS[1])}\nRUN echo refreshed > /etc/toolkit-refresh\n"
    )
    test_upstream.build_and_push(context, f"{refreshed}:{KERNELS[1]}")
    # The first build's images in a repository of this test's own: the rebuild below must not
    # change what the module's other tests see, whatever order they run in.
    copied = copy_library(
        test_upstream, versions, "library/pipeline-refreshed", Path(str(versions) + ".copy.toml")
    )
    moved = Path(str(versions) + ".refreshed.toml")
    moved.write_text(
        copied.read_text().replace("/upstream/driver-toolkit:", "/upstream/refreshed-toolkit:")
    )
    code, text, report = run(project, moved, load_test=False)  # the decision is the subject
    assert code == 0, text
    assert [(r["action"], r["status"]) for r in report] == [("skip", "skipped"), ("build", "ok")]
    assert "stale: toolkit image digest changed" in report[1]["detail"]
    # The refreshed toolkit has the same build tree and toolchain: nothing is compiled again.
    assert report[1]["compiled"]["cache"] == "hit", report[1]["compiled"]


def test_4_module_for_another_abi_is_refused_before_push(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream
    # A toolkit that claims 6.1.0-56 but carries 6.1.0-55 headers: the module loads on 56
    # (matching CRCs), so only the vermagic check can catch it.
    (tmp_path / "Containerfile").write_text(
        f"FROM {u.toolkit_image(KERNELS[0])}\n"
        f"RUN mkdir -p /lib/modules/{KERNELS[1]} "
        f"&& ln -s /usr/src/linux-headers-{KERNELS[0]} /lib/modules/{KERNELS[1]}/build\n"
    )
    wrong = f"{u.registry}/upstream/wrong-toolkit:{KERNELS[1]}"
    test_upstream.build_and_push(tmp_path, wrong)
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (KERNELS[1],), repository="library/wrong-abi"
    )
    text = versions.read_text().replace("upstream/driver-toolkit:", "upstream/wrong-toolkit:")
    versions.write_text(text)
    code, out, report = run(project, versions)
    assert code == errors.TARGET_FAILED, out
    assert report[0]["status"] == "failed"
    assert (
        f"habanalabs: vermagic names kernel '{KERNELS[0]}', not '{KERNELS[1]}'"
        in report[0]["detail"]
    )
    target = versions_file.load(versions).targets[0]
    assert registry_for(test_upstream).inspect(target.image).existence is Existence.ABSENT


def test_5_one_unresolvable_target_fails_alone(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    # A repository of its own (its images missing): the other targets are planned as usual.
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (*KERNELS, "6.1.0-54-amd64"), repository="library/unresolved"
    )
    code, _, report = run(project, versions, dry_run=True)
    assert code == errors.TARGET_FAILED
    assert [(r["action"], r["status"]) for r in report] == [
        ("build", "planned"),
        ("build", "planned"),
        ("fail", "failed"),
    ]
    assert "toolkit image" in report[2]["detail"] and "not found" in report[2]["detail"]


def test_6_an_unreachable_upstream_is_named_in_a_dry_run(project: Project, tmp_path: Path) -> None:
    # The shipped file, its upstreams moved to a port where nothing listens: deterministic
    # whether or not this machine reaches the public registries.
    closed = f"127.0.0.1:{free_port()}"
    text = (ROOT / "versions.toml").read_text()
    for host in ("registry.access.redhat.com", "ghcr.io", "vault.habana.ai"):
        text = text.replace(f"{host}/", f"{closed}/")
    text = text.replace("insecure_registries = []", f'insecure_registries = ["{closed}"]')
    text = text.replace("https://" + closed, "http://" + closed)
    offline = tmp_path / "versions.toml"
    offline.write_text(text)
    code, _, report = run(project, offline, dry_run=True)
    assert code == errors.UNKNOWN_STATE
    (result,) = report
    assert result["action"] == "fail"
    assert f"toolkit image {closed}/smgglrs/driver-toolkit:" in result["detail"]
    assert f"cannot reach {closed.split(':', maxsplit=1)[0]}" in result["detail"]


def test_7_config_errors_stop_before_any_side_effect(project: Project, tmp_path: Path) -> None:
    bad = tmp_path / "versions.toml"
    bad.write_text((ROOT / "versions.toml").read_text().replace("[toolkit]", "[toolkits]"))
    with pytest.raises(ConfigError) as info:
        run(project, bad)
    assert "toolkits: unknown key; did you mean 'toolkit'?" in str(info.value)


def test_8_firmware_lands_where_the_driver_requests_it(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream
    vendor_packages.build_firmware_rpm(u, test_upstream.runner, DRIVER, "x86_64")
    firmware = u.package_url("habanalabs-firmware-{driver}.el8.{arch}.rpm")
    versions = test_upstream.versions(
        tmp_path / "versions.toml",
        (KERNELS[1],),
        extra=f'firmware_url = "{firmware}"\n',
        repository="library/fw",
    )
    code, text, _ = run(project, versions, load_test=False)  # the image's layout is the subject
    assert code == 0, text
    target = versions_file.load(versions).targets[0]
    remote = registry_for(test_upstream).inspect(target.image)
    assert remote.labels["io.habana-ai-driver.firmware.package"] == (
        f"habanalabs-firmware-{DRIVER}.el8.x86_64.rpm"
    )
    rootfs = tmp_path / "rootfs.tar"
    Podman(test_upstream.runner).export_rootfs(target.image, rootfs)
    with tarfile.open(rootfs) as tar:
        names = set(tar.getnames())
    # The driver requests "habanalabs/gaudi/<file>" relative to the firmware search path.
    assert "opt/lib/firmware/habanalabs/gaudi/gaudi-boot-fit.itb" in names
    for name in vendor_packages.FIRMWARE_FILES:
        assert f"opt/lib/firmware/{name}" in names


def test_8b_a_firmware_file_a_module_declares_but_the_package_lacks_is_refused(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream
    declared = f"habanalabs/example/{vendor_packages.STANDIN_MODULE}.bin"
    partial = [f for f in vendor_packages.FIRMWARE_FILES if f != declared]
    name = "habanalabs-firmware-partial-{driver}.el8.{arch}.rpm"
    vendor_packages.build_firmware_rpm(
        u,
        test_upstream.runner,
        DRIVER,
        "x86_64",
        partial,
        name.format(driver=DRIVER, arch="x86_64"),
    )
    versions = test_upstream.versions(
        tmp_path / "versions.toml",
        (KERNELS[1],),
        extra=f'firmware_url = "{u.package_url(name)}"\n',
        repository="library/fw-partial",
    )
    code, out, report = run(project, versions)
    assert code == errors.TARGET_FAILED, out
    assert (
        f"{vendor_packages.STANDIN_MODULE}: declares firmware {declared}, not under "
        "/opt/lib/firmware" in report[0]["detail"]
    )
    target = versions_file.load(versions).targets[0]
    assert registry_for(test_upstream).inspect(target.image).existence is Existence.ABSENT


def test_9_a_kernel_without_a_symbol_the_driver_needs_is_reported_by_its_cause(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream
    kernel = KERNELS[0]
    # A toolkit whose kernel exports no hwmon_device_register_with_info (as with CONFIG_HWMON=n).
    (tmp_path / "Containerfile").write_text(
        f"FROM {u.toolkit_image(kernel)}\n"
        f"RUN sed -i '/\\thwmon_device_register_with_info\\t/d' "
        f"/usr/src/linux-headers-{kernel}/Module.symvers\n"
    )
    no_hwmon = f"{u.registry}/upstream/no-hwmon-toolkit:{kernel}"
    test_upstream.build_and_push(tmp_path, no_hwmon)
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (kernel,), repository="library/no-hwmon"
    )
    versions.write_text(
        versions.read_text().replace("upstream/driver-toolkit:", "upstream/no-hwmon-toolkit:")
    )
    code, out, report = run(project, versions)
    assert code == errors.TARGET_FAILED, out
    cause = re.compile(
        r'ERROR: modpost: "hwmon_device_register_with_info" \[\S+/habanalabs\.ko\] undefined!'
    )
    assert cause.search(report[0]["detail"]), report[0]["detail"]
    assert '"hwmon_device_register_with_info"' in out  # the summary (its table folds long lines)
    saved = json.loads((Path(report[0]["log"]).parent / "report.json").read_text())
    assert cause.search(saved[0]["detail"])

    # Remembered in the registry by the failed inputs' fingerprint: the next run holds the
    # pair with the cause and builds nothing; a new toolkit (an input) is tried again.
    target = versions_file.load(versions).targets[0]
    registry = registry_for(test_upstream)
    held = failure_records.read_records(registry, target.repository, [target.tag])[target.tag]
    assert cause.search(held.cause) and (held.step, held.origin) == ("build", errors.INPUTS)
    code, out, report = run(project, versions)
    assert code == errors.OK, out
    assert (report[0]["action"], report[0]["status"]) == ("hold", "held")
    assert report[0]["detail"] == held.line
    assert "failed before with the same inputs (" in out and "1 held" in out
    (tmp_path / "Containerfile").write_text(
        f"FROM {no_hwmon}\nRUN touch /etc/a-new-toolkit-build\n"
    )
    test_upstream.build_and_push(tmp_path, no_hwmon)
    code, out, report = run(project, versions)
    assert code == errors.TARGET_FAILED and report[0]["action"] == "build", out
    again = failure_records.read_records(registry, target.repository, [target.tag])[target.tag]
    assert again.fingerprint != held.fingerprint and again.digest != held.digest
    # The pair leaves the versions file: prune deletes its record from the registry.
    other = test_upstream.versions(
        tmp_path / "other.toml", (KERNELS[1],), repository="library/no-hwmon"
    )
    count, outcomes = prune.prune_library(
        versions_file.load(other), registry, older_than_days=None, apply=True, now=datetime.now(UTC)
    )
    assert count == 1
    assert [(o.item.tag, o.deleted) for o in outcomes] == [(record_tag(target.tag), True)]
    assert registry.list_tags(target.repository) == []


def test_10_an_in_tree_dependency_the_target_kernel_lacks_is_refused_before_push(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream
    kernel = KERNELS[1]
    # A kernel that builds (its Module.symvers still lists ib_core's exports) but ships no
    # ib_core module: the stand-in's dependency cannot resolve on such a node.
    (tmp_path / "Containerfile").write_text(
        f"FROM {u.toolkit_image(kernel)}\n"
        f"RUN rm /lib/modules/{kernel}/kernel/drivers/infiniband/core/ib_core.ko "
        f"&& depmod {kernel}\n"
    )
    no_ib = f"{u.registry}/upstream/no-ib-toolkit:{kernel}"
    test_upstream.build_and_push(tmp_path, no_ib)
    versions = test_upstream.versions(
        tmp_path / "versions.toml", (kernel,), repository="library/no-ib"
    )
    versions.write_text(
        versions.read_text().replace("upstream/driver-toolkit:", "upstream/no-ib-toolkit:")
    )
    code, out, report = run(project, versions)
    assert code == errors.TARGET_FAILED, out
    assert (
        f"{vendor_packages.STANDIN_MODULE}: depends on ib_core, which is neither in the image nor "
        f"a module of {kernel}" in report[0]["detail"]
    ), report[0]["detail"]
    target = versions_file.load(versions).targets[0]
    assert registry_for(test_upstream).inspect(target.image).existence is Existence.ABSENT


def test_11_modules_must_match_what_the_package_builds(
    project: Project, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    kernel = KERNELS[1]
    # Listed but not built: the build stops with the module's name.
    listed = test_upstream.versions(
        tmp_path / "listed.toml",
        (kernel,),
        repository="library/listed",
        modules=(*vendor_packages.EXAMPLE_MODULES, "habanalabs_ib"),
    )
    code, out, report = run(project, listed)
    assert code == errors.TARGET_FAILED, out
    assert "error: habanalabs_ib.ko was not built (it is listed in modules)" in report[0]["detail"]
    # Built but not listed: the checks name it, nothing is pushed.
    unlisted = test_upstream.versions(
        tmp_path / "unlisted.toml",
        (kernel,),
        repository="library/unlisted",
        modules=("habanalabs",),
    )
    code, out, report = run(project, unlisted)
    assert code == errors.TARGET_FAILED, out
    assert (
        f"the package also built {vendor_packages.STANDIN_MODULE}.ko, which modules does not list"
        in report[0]["detail"]
    )
    for versions in (listed, unlisted):
        target = versions_file.load(versions).targets[0]
        assert registry_for(test_upstream).inspect(target.image).existence is Existence.ABSENT


def compiled_of(report: list[dict[str, Any]]) -> list[str]:
    return [r["compiled"]["cache"] for r in report]


def made(report: list[dict[str, Any]]) -> bool:
    """Whether any target's log shows the driver's make running."""
    return any('RUN make -j"$(nproc)"' in Path(r["log"]).read_text() for r in report)


def test_12_a_cache_hit_gives_the_digest_a_fresh_compile_gives(
    first_build: Outcome, project: Project, versions: Path, test_upstream: UpstreamFixture
) -> None:
    library = copy_library(
        test_upstream, versions, "library/pipeline-hit", Path(str(versions) + ".hit.toml")
    )
    copied = Path(str(versions) + ".hit-one.toml")  # one pair: one fresh compile is the proof
    second = f'\n[[kernels]]\nrelease = "{KERNELS[1]}"\ndrivers = ["{DRIVER}"]\n'
    assert second in library.read_text()
    copied.write_text(library.read_text().replace(second, ""))
    # No load test: both images claim the same (none), and only the compile differs.
    code, text, fresh = run(project, copied, force=True, compile_cache=False, load_test=False)
    assert code == 0, text
    assert compiled_of(fresh) == ["refreshed"] and made(fresh)
    code, text, hit = run(project, copied, force=True, load_test=False)
    assert code == 0, text
    assert compiled_of(hit) == ["hit"] and not made(hit)
    assert [r["digest"] for r in hit] == [r["digest"] for r in fresh]
    assert None not in [r["digest"] for r in hit]
    # What the key holds is in report.json and the log.
    inputs = hit[0]["compiled"]["inputs"]
    assert inputs["kernel release"] == KERNELS[0] and re.fullmatch(
        "[0-9a-f]{64}", inputs["toolkit build tree and toolchain"]
    )
    assert "compile cache hit: " in Path(hit[0]["log"]).read_text()


def test_13_a_flavour_change_assembles_every_pair_again_and_compiles_nothing(
    first_build: Outcome, project: Project, versions: Path, test_upstream: UpstreamFixture
) -> None:
    copied = copy_library(
        test_upstream, versions, "library/pipeline-kmm1", Path(str(versions) + ".kmm1.toml")
    )
    kmm1 = Path(str(versions) + ".kmm1-flavour.toml")
    kmm1.write_text(copied.read_text() + '\n[image]\nflavour = "kmm1"\n')
    code, text, report = run(project, kmm1, jobs=2)
    assert code == 0, text
    assert all("stale: image flavour changed" in r["detail"] for r in report), report
    assert compiled_of(report) == ["hit", "hit"] and not made(report)
    assert all(r["load_tested"] for r in report)
