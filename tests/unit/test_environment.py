"""The suite fixes its own environment: a developer's settings of the variables the tool reads
(a signing key, an isolation, a cache) change nothing a test sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SUPPORTED_VARIABLES


def test_the_unit_tests_pass_whatever_the_developer_has_set() -> None:
    hostile = {
        "HABANA_SIGNING_KEY": "/nonexistent/key.pem",
        "HABANA_ISOLATION": "no-such-isolation",
        "BUILDAH_ISOLATION": "no-such-isolation",
        "HABANA_QEMU_ACCEL": "kvm",
        "HABANA_CACHE_DIR": "/nonexistent/cache",
        "HABANA_COMPILE_CACHE_DIR": "/nonexistent/compile",
        "SOURCE_DATE_EPOCH": "soon",
        "REGISTRY_AUTH_FILE": "/dev/zero",
        "NETRC": "/dev/zero",
        "LANGUAGE": "de",
        "COSIGN_PASSWORD": "not the password",
    }
    assert set(hostile) == set(SUPPORTED_VARIABLES)
    # The modules that read these: configuration, signing, isolation, packages, registry.
    tests = [
        "tests/unit/test_config.py",
        "tests/unit/test_isolation.py",
        "tests/unit/test_driver_package.py",
        "tests/unit/test_registry.py",
        "tests/unit/test_plan.py",
        "tests/unit/test_compile_cache.py",
        "tests/unit/test_cosign.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env={**os.environ, **hostile},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_unit_session_starts_no_podman(tmp_path: Path) -> None:
    """`nox -s unit` collects tests/unit only, and collecting it runs no podman (a probe at
    import time would run builds): a podman that records each call is first on PATH."""
    calls = tmp_path / "calls"
    shim = tmp_path / "podman"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    shim.chmod(0o755)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit",
        ],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "tests collected" in done.stdout
    assert not calls.exists(), calls.read_text()
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'session.run("pytest", "tests/unit",' in noxfile
