"""The suite fixes its own environment: a developer's settings of the variables the tool reads
(a signing key, an isolation, a cache) change nothing a test sees."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, SUPPORTED_VARIABLES


def test_the_unit_tests_pass_whatever_the_developer_has_set() -> None:
    hostile = {
        "HABANA_SIGNING_KEY": "/nonexistent/key.pem",
        "HABANA_ISOLATION": "no-such-isolation",
        "BUILDAH_ISOLATION": "no-such-isolation",
        "HABANA_QEMU_ACCEL": "kvm",
        "HABANA_CACHE_DIR": "/nonexistent/cache",
        "SOURCE_DATE_EPOCH": "soon",
        "REGISTRY_AUTH_FILE": "/dev/zero",
        "NETRC": "/dev/zero",
        "LANGUAGE": "de",
    }
    assert set(hostile) == set(SUPPORTED_VARIABLES)
    # The modules that read these: configuration, signing, isolation, packages, registry.
    tests = [
        "tests/unit/test_config.py",
        "tests/unit/test_isolation.py",
        "tests/unit/test_driver_package.py",
        "tests/unit/test_registry.py",
        "tests/unit/test_plan.py",
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
