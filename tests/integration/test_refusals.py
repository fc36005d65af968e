"""A Secure Boot node that never reads its machine-owner keys: Debian's realtime flavour is built
with CONFIG_EFI_DISABLE_RUNTIME=y, so without `efi=runtime` it loads no MokListRT and refuses a
module signed by an enrolled key. The build names that cause (from the console and the kernel's
configuration); with the node's kernel arguments given in versions.toml, the load test boots as
the nodes do and the outcome is what README says."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools import local_upstream
from habana_tasks.build import labels
from habana_tasks.config import versions_file
from habana_tasks.core.errors import OK
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient
from tests.conftest import ROOT, invoke_argv, require_tools
from tests.integration.conftest import DRIVER, UpstreamFixture
from tests.keys import make_pair

pytestmark = [pytest.mark.integration]
REALTIME = "6.1.0-56-rt-amd64"
CHECK_FAILED = 3


@pytest.fixture(scope="module")
def realtime(test_upstream: UpstreamFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signing library of one realtime kernel, its toolkit made by the local upstream."""
    require_tools("openssl")
    local_upstream.ensure_toolkit_image(
        test_upstream.upstream, Podman(test_upstream.runner), REALTIME
    )
    work = tmp_path_factory.mktemp("realtime")
    pair = make_pair(work / "keys", "habana library signing key")
    versions = test_upstream.versions(work / "versions.toml", (REALTIME,), repository="library/rt")
    versions.write_text(
        versions.read_text()
        + f'\n[signing]\ncertificate = "{pair.certificate}"\nkey = "{pair.key}"\n'
    )
    return versions


def with_node_args(versions: Path, out: Path, args: list[str]) -> Path:
    """The same library in a repository of its own, its kernel booted with args on the nodes."""
    entry = f'drivers = ["{DRIVER}"]\n'
    text = versions.read_text().replace(entry, f"{entry}node_kernel_args = {json.dumps(args)}\n")
    out.write_text(text.replace('/library/rt"', '/library/rt-node-args"'))
    return out


def invoke(task: str, versions: Path, cache: Path, *extra: str) -> tuple[int, str]:
    """`invoke <task> --kernel REALTIME` as a user runs it: exit code and output (one line)."""
    done = subprocess.run(
        invoke_argv(task, "--kernel", REALTIME, "--versions", str(versions), *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache)},
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def last_column(table: str) -> str:
    """The plan table's last column (the reason), its wrapped lines joined again."""
    cells = [line.split("│")[-2].strip() for line in table.splitlines() if line.count("│") > 2]
    return " ".join(cell for cell in cells if cell)


def report(cache: Path, run: str) -> list[dict[str, Any]]:
    """report.json of the newest run whose folder starts with `run`."""
    newest = sorted(cache.glob(f"logs/{run}*/report.json"))[-1]
    entries: list[dict[str, Any]] = json.loads(newest.read_text())
    return entries


FLAGGED = (
    "a Secure Boot node would refuse its modules: 6.1.0-56-rt-amd64 as built loads no "
    "machine-owner keys (EFI runtime services are off: CONFIG_EFI_DISABLE_RUNTIME=y; booting "
    "with efi=runtime turns them on)"
)


def test_the_plan_flags_a_kernel_that_trusts_no_machine_key_before_building(
    realtime: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    """Read from the toolkit's configuration: the plan, status and build say it, nothing is
    built; load-test names the pair as not published with that reason."""
    cache = tmp_path / "cache"
    done = subprocess.run(
        invoke_argv("build-all", "--dry-run", "--versions", str(realtime)),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == CHECK_FAILED, done.stdout + done.stderr
    assert FLAGGED in last_column(done.stdout), done.stdout
    code, said = invoke("build", realtime, cache)
    assert code == CHECK_FAILED, said
    (entry,) = report(cache, "2")  # the build's run folder (a timestamp)
    assert (entry["failure"]["step"], entry["failure"]["why"]) == ("Secure Boot node", FLAGGED)
    assert entry["compiled"] is None
    target = versions_file.load(realtime).targets[0]
    registry = RegistryClient([test_upstream.upstream.registry])
    assert registry.inspect(target.image).existence is Existence.ABSENT  # nothing built
    done = subprocess.run(
        invoke_argv("status", "--versions", str(realtime), "--format", "json"),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "HABANA_CACHE_DIR": str(cache)},
    )  # fmt: skip
    (item,) = json.loads(done.stdout)["targets"]
    assert (item["state"], item["reason"]) == ("failing", FLAGGED)
    code, said = invoke("load-test", realtime, cache)
    assert code == CHECK_FAILED and "manifest unknown" not in said, said
    (tested,) = report(cache, "load-test-")
    assert tested["reason"] == f"not in the library: not built: {FLAGGED}"


def test_a_published_image_refused_on_the_secure_boot_node_names_the_cause(
    realtime: Path, tmp_path: Path
) -> None:
    """Built and proven by a plain boot (--no-secure-boot), then retested on the Secure Boot
    node: the kernel loads no MOK, and the refusal says why, from the console and the config."""
    versions = tmp_path / "versions.toml"
    versions.write_text(realtime.read_text().replace('/library/rt"', '/library/rt-plain"'))
    cache = tmp_path / "cache"
    code, said = invoke("build", versions, cache, "--no-secure-boot")
    assert code == OK, said
    code, said = invoke("load-test", versions, cache, "--secure-boot")
    assert code == CHECK_FAILED, said
    (entry,) = report(cache, "load-test-")
    why = entry["reason"]
    assert why.startswith(
        "habanalabs refused: the kernel loaded no machine-owner keys (EFI runtime services are "
        "off: CONFIG_EFI_DISABLE_RUNTIME=y; booting with efi=runtime turns them on), so no "
        "enrolled key can vouch for the module"
    ), why
    assert why.endswith("(kernel: Loading of module with unavailable key is rejected)"), why
    assert "no 'Loading X.509 certificate: UEFI:MokListRT' in the kernel log" in entry["evidence"]
    assert entry["boot"] == "secure-boot"
    log = Path(entry["log"]).read_text()
    booted = [line for line in log.splitlines() if "LOAD-TEST: boot " in line]
    assert any("secureboot: Secure boot enabled" in line for line in booted)
    assert not any("MokListRT" in line for line in booted)


def test_booted_with_efi_runtime_the_node_trusts_the_enrolled_key(
    realtime: Path, test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    versions = with_node_args(realtime, tmp_path / "versions.toml", ["efi=runtime"])
    code, out = invoke("build", versions, tmp_path / "cache")
    assert code == OK, out
    (entry,) = report(tmp_path / "cache", "2")
    assert entry["load_test_boot"] == "secure-boot" and entry["status"] == "ok"
    log = Path(entry["log"]).read_text()
    assert "UEFI:MokListRT" in log
    (cmdline,) = [line for line in log.splitlines() if "LOAD-TEST: cmdline " in line]
    assert "efi=runtime" in cmdline.split()
    target = versions_file.load(versions).targets[0]
    remote = RegistryClient([test_upstream.upstream.registry]).inspect(target.image)
    assert remote.labels[labels.INPUT_LABELS["node kernel arguments"]] == "efi=runtime"
