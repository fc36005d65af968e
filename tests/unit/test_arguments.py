"""Every command-line argument is checked before the first request or child process: exit 2, one
line naming the option, the value and what is expected; --help shows the accepted range."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from habana_tasks.cli import arguments
from tests.conftest import ROOT, invoke_argv
from tests.invoke_cli import invoke

EXAMPLE = str(ROOT / "examples" / "local" / "versions.toml")
KERNEL = "6.1.0-56-amd64"
DRIVER = "6.1.0-1"

# (argv after `invoke`, the option the message must name, the value it must show)
REFUSED: list[tuple[list[str], str, str]] = [
    (["build-all", "--jobs", "0"], "--jobs", "'0'"),
    (["build-all", "--jobs", "-3"], "--jobs", "'-3'"),
    (["build-all", "--jobs", "100000000"], "--jobs", "'100000000'"),
    (["build-all", "--jobs", "many"], "--jobs", "'many'"),
    (["build-all", "--jobs", "1.5"], "--jobs", "'1.5'"),
    (["example", "--jobs", "0"], "--jobs", "'0'"),
    (["load-test", "--timeout", "-5"], "--timeout", "'-5'"),
    (["load-test", "--timeout", "0"], "--timeout", "'0'"),
    (["load-test", "--timeout", "nan"], "--timeout", "'nan'"),
    (["load-test", "--timeout", "inf"], "--timeout", "'inf'"),
    (["load-test", "--timeout", "soon"], "--timeout", "'soon'"),
    (["load-test", "--kernel", "6.1.0-.."], "--kernel", "'6.1.0-..'"),
    (["load-test", "--driver", "latest"], "--driver", "'latest'"),
    (["load-test", "--kernel", KERNEL, "--image", "foo"], "--image", "'foo'"),
    (["load-test", "--kernel", KERNEL, "--image", "h:5/r"], "--image", "'h:5/r'"),
    (["prune", "--older-than", "-1"], "--older-than", "'-1'"),
    (["prune", "--older-than", "a week"], "--older-than", "'a week'"),
    (["build", "--kernel", "6.1.0-.."], "--kernel", "'6.1.0-..'"),
    (["build", "--kernel", ""], "--kernel", "''"),
    (["build", "--kernel", KERNEL, "--driver", "1.x"], "--driver", "'1.x'"),
    (["status", "--format", "yaml"], "--format", "'yaml'"),
    (["matrix", "--format", "gitlab"], "--format", "'gitlab'"),
    (["matrix", "--max-jobs", "0"], "--max-jobs", "'0'"),
    (["matrix", "--max-jobs", "257"], "--max-jobs", "'257'"),
    (["matrix", "--max-jobs", "all"], "--max-jobs", "'all'"),
    (["build-all", "--only", " , "], "--only", "' , '"),
    (["build-all", "--only", "6.1.0-1-k,bad/tag"], "--only", "'bad/tag'"),
    (["build-all", "--only", "9.9.9-1-not-listed"], "--only", "'9.9.9-1-not-listed'"),
    (["build-all", "--only", "x" * 100_001], "--only", "'xxxx"),
    (["summary", "--reports", "/nonexistent/logs"], "--reports", "'/nonexistent/logs'"),
    (["load-test", "--secure-boot"], "--secure-boot", "has no [signing]"),
    (["kmm-module", "--driver", DRIVER, "--namespace", "Bad_NS!"], "--namespace", "'Bad_NS!'"),
    (["kmm-module", "--driver", DRIVER, "--name", "UPPER case"], "--name", "'UPPER case'"),
    (["kmm-module", "--driver", DRIVER, "--name", "a" * 64], "--name", "'aaaa"),
    (["kmm-module", "--driver", "x"], "--driver", "'x'"),
    (["kmm-module", "--driver", DRIVER, "--output", "/"], "--output", "'/'"),
    (["kmm-module", "--driver", DRIVER, "--output", "/nonexistent/m.yaml"], "--output", "'/non"),
    (
        ["kmm-module", "--driver", DRIVER, "--sign-key-secret", "Key!", "--sign-cert-secret", "c"],
        "--sign-key-secret",
        "'Key!'",
    ),
    (
        ["kmm-module", "--driver", DRIVER, "--signed-repository", "no-registry"],
        "--signed-repository",
        "'no-registry'",
    ),
    (["preflight", "--openshift", "four.sixteen"], "--openshift", "'four.sixteen'"),
    (["preflight", "--openshift", "4.16"], "--openshift", "'4.16'"),
    (["preflight", "--openshift", "4.16.1", "--arch", "riscv64"], "--arch", "'riscv64'"),
    (["preflight", "--nodes", "/nonexistent.json"], "--nodes", "'/nonexistent.json'"),
    (["preflight", "--nodes", "/dev/zero"], "--nodes", "/dev/zero"),
    (["preflight", "--openshift", "4.16.1", "--format", "html"], "--format", "'html'"),
    (["preflight", "--openshift", "4.16.1", "--driver", "new"], "--driver", "'new'"),
    (["discover", "--minor", "x.y"], "--minor", "'x.y'"),
    (["discover", "--minor", "4.14", "--arch", "amd64"], "--arch", "'amd64'"),
    (["discover", "--minor", "4.14", "--authfile", "/nonexistent"], "--authfile", "'/nonex"),
    (
        ["discover", "--minor", "4.14", "--release-repository", "https://quay.io/x"],
        "--release-repository",
        "'https://quay.io/x'",
    ),
]


@pytest.mark.reliability("arguments", outcome="refused before any request or process")
@pytest.mark.parametrize(("argv", "option", "shown"), REFUSED, ids=" ".join)
def test_a_bad_argument_is_refused_before_any_request_or_process(
    argv: list[str],
    option: str,
    shown: str,
    no_side_effects: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    versions = [] if argv[0] in ("example", "summary") else ["--versions", EXAMPLE]
    code, _, err = invoke([*argv, *versions], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {option} ") or lines[0].startswith(f"error: {option}:")
    assert shown in lines[0] and "expected" in lines[0], lines[0]
    assert "Traceback" not in err
    assert no_side_effects == []


def test_an_output_path_in_a_directory_the_user_cannot_write_is_refused(
    tmp_path: Path, no_side_effects: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(locked, os.W_OK):  # root writes anywhere: then a FIFO stands for a bad target
        target = tmp_path / "fifo"
        os.mkfifo(target)
        expected = "it is a FIFO"
    else:
        target = locked / "m.yaml"
        expected = "may write"
    argv = ["kmm-module", "--driver", DRIVER, "--output", str(target), "--versions", EXAMPLE]
    code, _, err = invoke(argv, capsys)
    assert code == 2 and expected in err and "--output" in err, err
    assert no_side_effects == []


@pytest.mark.parametrize(
    ("task", "option", "shown"),
    [
        ("build-all", "--jobs", "1-32"),
        ("example", "--jobs", "1-32"),
        ("load-test", "--timeout", "1-3600"),
        ("prune", "--older-than", "0-36500"),
        ("kmm-module", "--name", "DNS-1123 label"),
        ("kmm-module", "--namespace", "DNS-1123 label"),
    ],
)
def test_help_shows_the_accepted_range(task: str, option: str, shown: str) -> None:
    """Through the real command line: invoke lays its help out for a terminal."""
    done = subprocess.run(
        invoke_argv("--help", task), cwd=ROOT, capture_output=True, text=True, check=True
    )
    out = " ".join(done.stdout.split())
    assert option in out and shown in out, out


def test_a_driver_not_listed_for_the_kernel_names_the_kernels_drivers(
    capsys: pytest.CaptureFixture[str], no_side_effects: list[str]
) -> None:
    code, _, err = invoke(
        ["build", "--kernel", KERNEL, "--driver", "9.9.9", "--versions", EXAMPLE], capsys
    )
    assert code == 2, err
    assert f"drivers listed for {KERNEL}: {DRIVER}" in err, err
    assert "did you mean" not in err
    assert no_side_effects == []


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (lambda v: arguments.count("--jobs", v, arguments.JOBS), "32", 32),
        (lambda v: arguments.count("--jobs", v, arguments.JOBS), " 1 ", 1),
        (lambda v: arguments.seconds("--timeout", v, arguments.TIMEOUT_SECONDS), "1.5", 1.5),
        (lambda v: arguments.count("--older-than", v, arguments.OLDER_THAN_DAYS), "0", 0),
        (lambda v: arguments.release("--kernel", v), "5.14.0-284.el9.aarch64+64k", None),
        (lambda v: arguments.release("--kernel", v), "6.1.0-56-cloud-amd64", None),
        (lambda v: arguments.openshift_release("--openshift", v), "4.17.0-rc.1", None),
        (lambda v: arguments.openshift_minor("--minor", v), "4.14", None),
        (lambda v: arguments.dns_label("--namespace", v), "habana-ai-operator", None),
        (lambda v: arguments.dns_subdomain("--sign-key-secret", v), "keys.v1-signing", None),
        (lambda v: arguments.image("--image", v), "127.0.0.1:5055/lib/d@sha256:" + "a" * 64, None),
        (lambda v: arguments.repository("--release-repository", v), "quay.io/ocp/rel", None),
    ],
)
def test_a_good_argument_is_accepted_as_typed(
    check: Callable[[str], object], value: str, expected: object
) -> None:
    assert check(value) == (value if expected is None else expected)
