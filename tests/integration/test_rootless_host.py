"""A host that cannot serve an ordinary user is named before anything starts: real users of
this host — one without subordinate ids (a system account, as many service and CI users are),
one whose home podman cannot write (HOME=/nonexistent, as daemons have) — run `invoke build`
and get one line saying what is missing and the command that fixes it, exit 6, with no podman
started. Run as root (it makes the users)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from habana_tasks.core.errors import HOST_FAILED
from habana_tasks.core.process import find_tool
from habana_tasks.core.user_session import NATIVE_OVERLAY_KERNEL, kernel_version
from tests.conftest import IN_CI, ROOT
from tests.integration.conftest import KERNELS, UpstreamFixture

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    """An administration command by its full path (/usr/sbin is not on every root's PATH)."""
    found = find_tool(name)
    assert found, f"{name} is missing"
    return found


def needs_root() -> None:
    if os.getuid() != 0:
        message = "makes users of this host: run as root (the rootless session is the user)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def system_user(name: str, home: str | None) -> None:
    """A system account (useradd gives it no subordinate ids), with a home or none."""
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode != 0:
        where = ["--create-home", "--home-dir", home] if home else ["--no-create-home"]
        subprocess.run(
            [tool("useradd"), "--system", *where, "--shell", "/bin/bash", name], check=True
        )


def build_as(name: str, home: str, versions: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """`invoke build` as the user would type it in this checkout (the cache where it may write)."""
    return subprocess.run(
        [tool("runuser"), "-u", name, "--", "env", "-i", f"HOME={home}", f"USER={name}",
         "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", f"HABANA_CACHE_DIR={cache}",
         str(ROOT / ".venv" / "bin" / "invoke"), "build", "--kernel", KERNELS[0],
         "--versions", str(versions)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "home", "expected"),
    [
        (
            "habana-nosubids",
            "/var/lib/habana-nosubids",
            "habana-nosubids has no subordinate uids in /etc/subuid (fix: sudo usermod "
            "--add-subuids 100000-165535 habana-nosubids && podman system migrate)",
        ),
        (
            "habana-nohome",
            "/nonexistent",
            "podman cannot create its storage /nonexistent/.local/share/containers/storage: / is "
            "not writable (HOME=/nonexistent; fix: give habana-nohome a writable home",
        ),
    ],
)
def test_a_host_that_cannot_serve_the_user_says_so_before_anything_runs(
    test_upstream: UpstreamFixture, name: str, home: str, expected: str
) -> None:
    needs_root()
    system_user(name, home if home != "/nonexistent" else None)
    if name == "habana-nohome":  # subordinate ids given: only the home is missing
        subprocess.run([tool("usermod"), "--add-subuids", "300000-365535", "--add-subgids",
                        "300000-365535", name], check=True)  # fmt: skip
    # Where the user may read the versions file and write the cache (pytest's folder is root's).
    with tempfile.TemporaryDirectory(prefix="habana-rootless-host-") as shared:
        Path(shared).chmod(0o755)
        versions = test_upstream.versions(Path(shared) / "versions.toml")
        cache = Path(shared) / "cache"
        cache.mkdir()
        os.chown(cache, int(subprocess.check_output(["id", "-u", name])), -1)
        done = build_as(name, home, versions, cache)
    output = done.stdout + done.stderr
    assert done.returncode == HOST_FAILED, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith("error: rootless podman cannot work here: "), output
    assert expected in lines[0], output
    # podman never ran: it makes the user's storage on its first command.
    assert not (Path(home) / ".local" / "share" / "containers").exists()


def fresh_user(name: str) -> Path:
    """A new account with subordinate ids and an empty home, as a new colleague has."""
    subprocess.run([tool("userdel"), "--remove", name], capture_output=True, check=False)
    subprocess.run([tool("useradd"), "--create-home", "--shell", "/bin/bash", name], check=True)
    if subprocess.run(["grep", "-q", f"^{name}:", "/etc/subuid"], check=False).returncode:
        subprocess.run([tool("usermod"), "--add-subuids", "400000-465535", "--add-subgids",
                        "400000-465535", name], check=True)  # fmt: skip
    return Path(subprocess.check_output(["getent", "passwd", name], text=True).split(":")[5])


def podman_through_the_tool(name: str, home: Path, *env: str) -> str:
    """podman run the way the tool runs every child (its one process runner), then the driver
    the user's own podman reports afterwards."""
    script = (
        "from habana_tasks.core.process import ProcessRunner\n"
        "ProcessRunner().run(['podman', 'images'])\n"
    )
    base = [tool("runuser"), "-u", name, "--", "env", "-i", f"HOME={home}", f"USER={name}",
            "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]  # fmt: skip
    subprocess.run(
        [*base, *env, str(ROOT / ".venv" / "bin" / "python"), "-c", script],
        cwd="/", check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    done = subprocess.run(
        [*base, "podman", "info", "--format", "{{.Store.GraphDriverName}}"],
        cwd="/", check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ("", "overlay"),  # nobody chose: the tool asks for native overlay (kernel ≥ 5.13)
        ("STORAGE_DRIVER=vfs", "vfs"),  # the user's variable wins
        ("storage.conf", "vfs"),  # so does the user's own storage.conf
        ("CONTAINERS_STORAGE_CONF", "vfs"),  # and a storage.conf named by the variable
    ],
)
def test_a_new_users_storage_is_made_with_overlay_unless_the_user_chose(
    chosen: str, expected: str
) -> None:
    needs_root()
    if kernel_version(os.uname().release) < NATIVE_OVERLAY_KERNEL and not chosen:
        expected = "vfs"  # no rootless overlay in this kernel, no fuse-overlayfs installed
    name = "habana-fresh"
    home = fresh_user(name)
    env = [chosen] if chosen.startswith("STORAGE_DRIVER") else []
    if chosen in ("storage.conf", "CONTAINERS_STORAGE_CONF"):
        folder = home / (".config/containers" if chosen == "storage.conf" else "elsewhere")
        folder.mkdir(parents=True)
        (folder / "storage.conf").write_text('[storage]\ndriver = "vfs"\n')
        subprocess.run(["chown", "-R", f"{name}:", str(home)], check=True)
        if chosen == "CONTAINERS_STORAGE_CONF":
            env = [f"CONTAINERS_STORAGE_CONF={folder / 'storage.conf'}"]
    try:
        assert podman_through_the_tool(name, home, *env) == expected
    finally:
        subprocess.run(["pkill", "-u", name], capture_output=True, check=False)
        subprocess.run([tool("userdel"), "--remove", name], capture_output=True, check=False)
