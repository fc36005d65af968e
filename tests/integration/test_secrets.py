"""A canary password in the registry auth file and in ~/.netrc, through a whole build behind a
registry that demands a login: it reaches that registry and nothing else — no argv, no log, no
report, no label, no layer, no build argument, no other host."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from habana_tasks.config import versions_file
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.auth import Credentials
from habana_tasks.registry.client import RegistryClient
from tests.conftest import ROOT, RecordProperty, invoke_argv
from tests.integration.conftest import KERNELS, UpstreamFixture, route_through
from tests.registry_proxy import Faults, basic_challenge, registry_proxy
from tests.watch import argv_snapshots

pytestmark = [pytest.mark.integration, pytest.mark.reliability("secrets")]

CANARY = "canary-5ecret-7f3a91"


def hits_in_tree(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and CANARY.encode() in path.read_bytes():
            found.append(str(path))
    return found


def test_the_canary_reaches_its_registry_and_nothing_else(
    test_upstream: UpstreamFixture, tmp_path: Path, record_property: RecordProperty
) -> None:
    u = test_upstream.upstream
    faults = Faults(raw=basic_challenge)
    with registry_proxy(u.registry, faults) as private:
        auth = tmp_path / "auth.json"
        token = base64.b64encode(f"robot:{CANARY}".encode()).decode()
        auth.write_text(json.dumps({"auths": {private: {"auth": token}}}))
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login vendor password {CANARY}\n")
        plain = test_upstream.versions(
            tmp_path / "plain.toml", KERNELS[:1], repository="library/secrets"
        )
        versions = route_through(
            plain, tmp_path / "versions.toml", "repository", u.registry, private
        )
        target = versions_file.load(versions).targets[0]
        cache = tmp_path / "cache"
        seen: list[str] = []
        stop = threading.Event()
        watcher = threading.Thread(target=argv_snapshots, args=(stop, seen), daemon=True)
        watcher.start()
        try:
            done = subprocess.run(
                invoke_argv("build", "--kernel", target.kernel, "--versions", str(versions)),
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
                env={
                    **os.environ,
                    "HABANA_CACHE_DIR": str(cache),
                    "REGISTRY_AUTH_FILE": str(auth),
                    "NETRC": str(netrc),
                },
            )
        finally:
            stop.set()
            watcher.join()
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        expected = "Basic " + token
        # It was used, and only where it belongs: every Authorization the registry got is it.
        assert set(faults.authorizations) == {expected}
        registry = RegistryClient(
            [private], credentials=lambda r, repo: Credentials("robot", CANARY)
        )
        remote = registry.inspect(target.image)
        config_blob = json.dumps(remote.labels)
        rootfs = tmp_path / "rootfs.tar"
        Podman(test_upstream.runner).export_rootfs(target.image, rootfs)
        history = test_upstream.runner.run(
            ["podman", "image", "inspect", target.image], keep_output=True
        ).text

    assert CANARY not in output
    assert [line for line in seen if CANARY in line] == []  # argv
    assert hits_in_tree(cache) == []  # logs, report.json, work folders
    assert CANARY not in config_blob  # labels
    assert CANARY not in history  # build arguments, history, config
    with tarfile.open(rootfs) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            assert handle is None or CANARY.encode() not in handle.read(), member.name  # layers
    record_property("outcome", "0 hits")
