"""The user's session, however they arrived: the runtime directory every child and the tool's
own registry client share (podman's own order), the storage driver asked of rootless podman,
and what a rootless host lacks, named with its fix before anything runs. The ownership rules
are exercised with this process's own uid (root here), which owns what the tests make."""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from habana_tasks.core import process, user_session
from habana_tasks.core.errors import HOST_FAILED, HostError
from habana_tasks.core.user_session import HostFiles, Session, Storage
from habana_tasks.registry import auth

UID = os.getuid()
MOUNTS = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "40 27 0:50 / {root}/home rw,relatime - nfs4 server:/home rw,vers=4.2\n"
    "41 40 0:51 / {root}/home/local\\040disk rw - ext4 /dev/vdb rw\n"
)


def private(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


def test_a_login_sessions_runtime_directory_is_kept(tmp_path: Path) -> None:
    given = private(tmp_path / "run-user")
    env = {"XDG_RUNTIME_DIR": str(given), "TMPDIR": str(tmp_path / "tmp")}
    assert user_session.runtime_dir(env, UID, tmp_path / "none") == (given, None)


def test_without_a_session_podmans_own_choice_is_made(tmp_path: Path) -> None:
    """`su -`, `sudo -iu`, runuser, cron: no XDG_RUNTIME_DIR. /run/user/<uid> when it is the
    user's, else $TMPDIR/podman-run-<uid>, made private (podman makes it so too)."""
    run_user = tmp_path / "run" / "user"
    made = private(run_user / str(UID))
    env = {"TMPDIR": str(private(tmp_path / "tmp"))}
    assert user_session.runtime_dir(env, UID, run_user) == (made, None)
    made.rmdir()
    path, notice = user_session.runtime_dir(env, UID, run_user)
    assert path == tmp_path / "tmp" / f"podman-run-{UID}" and notice is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o775, 0o777, "another user's"])
def test_a_runtime_directory_others_may_write_or_left_by_another_user_is_replaced(
    tmp_path: Path, mode: int | str
) -> None:
    stale = private(tmp_path / "stale", mode if isinstance(mode, int) else 0o700)
    if isinstance(mode, str):
        os.chown(stale, UID + 1, -1)
    env = {"XDG_RUNTIME_DIR": str(stale), "TMPDIR": str(private(tmp_path / "tmp"))}
    path, notice = user_session.runtime_dir(env, UID, tmp_path / "none")
    assert path == tmp_path / "tmp" / f"podman-run-{UID}"
    assert notice == (
        f"XDG_RUNTIME_DIR={stale} is not this user's own private directory; "
        f"podman, skopeo and cosign use {path}"
    )


def test_a_missing_runtime_directory_is_replaced(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "gone"), "TMPDIR": str(private(tmp_path / "t"))}
    path, notice = user_session.runtime_dir(env, UID, tmp_path / "none")
    assert path.name == f"podman-run-{UID}" and notice and "gone is not" in notice


def test_no_private_runtime_directory_at_all_is_the_hosts_failure(tmp_path: Path) -> None:
    taken = private(tmp_path / "tmp" / f"podman-run-{UID}", 0o777)
    with pytest.raises(HostError) as caught:
        user_session.runtime_dir({"TMPDIR": str(tmp_path / "tmp")}, UID, tmp_path / "none")
    assert caught.value.exit_code == HOST_FAILED
    assert str(taken) in str(caught.value) and "\n" not in str(caught.value)


def test_root_keeps_its_environment_unless_its_runtime_directory_is_gone(tmp_path: Path) -> None:
    """Root keeps a XDG_RUNTIME_DIR that exists (podman reads its auth file there too); one left
    by a user's session that names no folder is given to no child, and said."""
    assert user_session.session({"XDG_RUNTIME_DIR": str(tmp_path)}, 0) == Session(0, None)
    assert user_session.session({}, 0) == Session(0, None)
    gone = user_session.session({"XDG_RUNTIME_DIR": "/run/user/1000"}, 0)
    assert gone.unset == ("XDG_RUNTIME_DIR",) and gone.environment == {}
    assert gone.notices == (
        "XDG_RUNTIME_DIR=/run/user/1000 does not exist; podman, skopeo and cosign use "
        "/run/containers/0",
    )


def test_a_variable_no_child_gets_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    chosen = Session(0, None, unset=("XDG_RUNTIME_DIR",))
    monkeypatch.setattr(user_session, "current", lambda: chosen)
    assert "XDG_RUNTIME_DIR" not in process.child_environment()


KERNEL_NEW, KERNEL_OLD = "6.1.0-55-amd64", "5.10.0-30-amd64"


@pytest.mark.parametrize(
    ("kernel", "fuse", "expected"),
    [
        (KERNEL_NEW, None, Storage("overlay", {"STORAGE_DRIVER": "overlay"})),
        ("5.13.0", None, Storage("overlay", {"STORAGE_DRIVER": "overlay"})),
        (
            KERNEL_OLD,
            "/usr/bin/fuse-overlayfs",
            Storage(
                "overlay",
                {
                    "STORAGE_DRIVER": "overlay",
                    "STORAGE_OPTS": "overlay.mount_program=/usr/bin/fuse-overlayfs",
                },
            ),
        ),
    ],
)
def test_rootless_podman_is_asked_for_overlay_where_the_host_has_it(
    tmp_path: Path, kernel: str, fuse: str | None, expected: Storage
) -> None:
    device = tmp_path / "fuse"  # a file this user may read and write stands in for /dev/fuse
    device.touch()
    graph = tmp_path / "storage"
    assert user_session.storage_choice({}, tmp_path, graph, kernel, fuse, device) == expected


def test_without_overlay_vfs_is_kept_and_said(tmp_path: Path) -> None:
    fuse = "/usr/bin/fuse-overlayfs"
    gone = tmp_path / "no-fuse"  # a device this user cannot open
    unusable = user_session.storage_choice({}, tmp_path, tmp_path / "g", KERNEL_OLD, fuse, gone)
    assert unusable.driver == "vfs"
    chosen = user_session.storage_choice({}, tmp_path, tmp_path / "g", KERNEL_OLD, None)
    assert chosen.driver == "vfs" and chosen.environment == {}
    assert chosen.notice and "install fuse-overlayfs" in chosen.notice


def test_a_storage_made_with_vfs_is_left_and_said(tmp_path: Path) -> None:
    graph = tmp_path / "storage"
    (graph / "vfs").mkdir(parents=True)
    chosen = user_session.storage_choice({}, tmp_path, graph, KERNEL_NEW, None)
    assert chosen.environment == {}
    assert chosen.notice and "podman system reset" in chosen.notice and str(graph) in chosen.notice


@pytest.mark.parametrize("way", ["STORAGE_DRIVER", "CONTAINERS_STORAGE_CONF", "storage.conf"])
def test_a_storage_the_user_chose_is_never_overridden(tmp_path: Path, way: str) -> None:
    env = {way: "vfs"} if way != "storage.conf" else {"XDG_CONFIG_HOME": str(tmp_path / "c")}
    if way == "storage.conf":
        (tmp_path / "c" / "containers").mkdir(parents=True)
        (tmp_path / "c" / "containers" / "storage.conf").write_text('[storage]\ndriver = "vfs"\n')
    assert user_session.storage_choice(env, tmp_path, tmp_path / "g", KERNEL_NEW, None) == Storage()


def test_the_graph_root_follows_the_users_storage_conf(tmp_path: Path) -> None:
    conf = tmp_path / "c" / "containers" / "storage.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('[storage]\ngraphroot = "$HOME/images"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "c")}
    assert user_session.graph_root(env, tmp_path, "alice", 1001) == tmp_path / "images"
    default = user_session.graph_root({}, tmp_path, "alice", 1001)
    assert default == tmp_path / ".local" / "share" / "containers" / "storage"


def host_files(tmp_path: Path, subuid: str, subgid: str, nsswitch: str = "") -> HostFiles:
    for name, text in (("subuid", subuid), ("subgid", subgid), ("nsswitch", nsswitch)):
        (tmp_path / name).write_text(text)
    (tmp_path / "mountinfo").write_text(MOUNTS.format(root=tmp_path))
    return HostFiles(
        tmp_path / "subuid", tmp_path / "subgid", tmp_path / "nsswitch", tmp_path / "mountinfo"
    )


def test_a_user_without_subordinate_ids_is_told_the_fix(tmp_path: Path) -> None:
    name = user_session.user_name(UID)
    files = host_files(tmp_path, "someone:100000:65536\n", f"{name}:100000:65536\n")
    problems = user_session.rootless_problems({"HOME": str(tmp_path)}, UID, files)
    assert problems == [
        f"{name} has no subordinate uids in {tmp_path / 'subuid'} (fix: sudo usermod "
        f"--add-subuids 100000-165535 {name} && podman system migrate)"
    ]


def test_subordinate_ids_by_uid_or_from_another_source_are_accepted(tmp_path: Path) -> None:
    files = host_files(tmp_path, f"{UID}:200000:65536\n", f"{UID}:200000:65536\n")
    assert user_session.rootless_problems({"HOME": str(tmp_path)}, UID, files) == []
    ldap = host_files(tmp_path, "", "", "passwd: files\nsubid: sss\n")
    assert user_session.rootless_problems({"HOME": str(tmp_path)}, UID, ldap) == []
    files_only = host_files(tmp_path, "", "", "subid: files\n")
    assert len(user_session.rootless_problems({"HOME": str(tmp_path)}, UID, files_only)) == 2


def test_missing_newuidmap_is_told_the_package(tmp_path: Path) -> None:
    files = replace(host_files(tmp_path, f"{UID}:1:2\n", f"{UID}:1:2\n"), tool_dirs=())
    env = {"HOME": str(tmp_path), "PATH": str(tmp_path)}
    assert user_session.rootless_problems(env, UID, files) == [
        "newuidmap is missing (fix: sudo apt-get install uidmap)",
        "newgidmap is missing (fix: sudo apt-get install uidmap)",
    ]


def test_a_newuidmap_without_privilege_is_named(tmp_path: Path) -> None:
    plain = tmp_path / "bin" / "newuidmap"
    plain.parent.mkdir()
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o755)
    assert not user_session._setuid_or_capable(str(plain))
    plain.chmod(0o4755)
    assert user_session._setuid_or_capable(str(plain)) == (os.stat(plain).st_uid == 0)


def test_storage_on_a_network_filesystem_is_refused_with_a_local_one(tmp_path: Path) -> None:
    files = host_files(tmp_path, f"{UID}:1:2\n", f"{UID}:1:2\n")
    home = tmp_path / "home" / "alice"
    (tmp_path / "home" / "local disk" / "x").mkdir(parents=True)
    home.mkdir()
    # A path that is not there yet is on its nearest existing folder's filesystem.
    assert user_session.filesystem_of(home / "not-yet", files.mountinfo) == "nfs4"
    assert user_session.filesystem_of(tmp_path / "home/local disk/x", files.mountinfo) == "ext4"
    assert user_session.filesystem_of(Path("/var/tmp"), files.mountinfo) == "ext4"
    (problem,) = user_session.rootless_problems({"HOME": str(home)}, UID, files)
    assert problem.startswith(
        f"podman's storage {home}/.local/share/containers/storage is on nfs4, which cannot "
        "hold a rootless user's images (fix: printf"
    )


def test_the_real_mount_table_is_read() -> None:
    """The counterpart of the fixture above: this host's own table names / as something."""
    assert user_session.filesystem_of(Path("/"), HostFiles().mountinfo) not in ("", "nfs")


def test_a_rootless_host_check_is_one_line_exit_6(tmp_path: Path) -> None:
    files = host_files(tmp_path, "", "")
    with pytest.raises(HostError) as caught:
        user_session.check_host({"HOME": str(tmp_path)}, UID + 4242, files)
    message = str(caught.value)
    assert caught.value.exit_code == HOST_FAILED and "\n" not in message
    assert message.startswith("rootless podman cannot work here: ") and message.count("fix:") == 2


def test_root_needs_nothing_of_that() -> None:
    user_session.check_host({}, 0, HostFiles(Path("/nonexistent"), Path("/nonexistent")))


def test_every_child_gets_the_sessions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = Session(1001, Path("/tmp/podman-run-1001"), {"XDG_RUNTIME_DIR": "/r", "A": "b"})
    monkeypatch.setattr(user_session, "current", lambda: chosen)
    env = process.child_environment({"A": "given"})
    assert env["XDG_RUNTIME_DIR"] == "/r" and env["A"] == "given" and env["LC_ALL"] == "C"


def test_the_tool_reads_the_auth_file_in_podmans_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ordinary user's first auth file is the one in the runtime directory rootless podman
    uses (never /run/containers/<uid>, which root's podman makes unreadable); root's is
    XDG_RUNTIME_DIR's or /run/containers/0's, as podman's."""
    asked: list[tuple[dict[str, str], int]] = []

    def runtime_dir(env: dict[str, str], uid: int) -> tuple[Path, None]:
        asked.append((dict(env), uid))
        return tmp_path / "run", None

    monkeypatch.setattr(user_session, "runtime_dir", runtime_dir)
    env = {"HOME": str(tmp_path)}
    assert auth.runtime_auth_file(env, 1001) == tmp_path / "run" / "containers" / "auth.json"
    assert asked == [(env, 1001)]
    assert auth.runtime_auth_file({}, 0) == Path("/run/containers/0/auth.json")
    runtime = str(tmp_path)
    assert (
        auth.runtime_auth_file({"XDG_RUNTIME_DIR": runtime}, 0)
        == tmp_path / "containers" / "auth.json"
    )
    assert auth.runtime_auth_file({"XDG_RUNTIME_DIR": "/nonexistent"}, 0) == Path(
        "/run/containers/0/auth.json"
    )


def test_cosign_is_given_only_the_login_podman_would_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first.json", tmp_path / "docker" / "config.json"
    token = base64.b64encode(b"robot:secret").decode()
    first.write_text(json.dumps({"auths": {"r.example/team": {"auth": token}}}))
    second.parent.mkdir()
    other = base64.b64encode(b"other:other").decode()
    second.write_text(
        json.dumps({"auths": {"r.example": {"auth": other}, "index.docker.io": {"auth": other}}})
    )
    monkeypatch.setattr(auth, "auth_files", lambda env=None: [first, second])
    with auth.docker_config("r.example/team/driver@sha256:" + "0" * 64) as env:
        written = Path(env["DOCKER_CONFIG"]) / "config.json"
        assert json.loads(written.read_text()) == {"auths": {"r.example": {"auth": token}}}
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert not written.exists()
    with auth.docker_config("docker.io/library/x:1") as env:
        hub = json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())
    assert hub == {"auths": {"https://index.docker.io/v1/": {"auth": other}}}
    # No login podman would use: cosign's own keychain (helpers, cloud keychains) decides.
    with auth.docker_config("elsewhere.example/x:1") as env:
        assert env == {}


def test_each_notice_is_said_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = Session(1001, Path("/r"), {}, "vfs", ("one", "two"))
    monkeypatch.setattr(user_session, "current", lambda: chosen)
    monkeypatch.setattr(user_session, "_TOLD", set())
    assert user_session.untold_notices() == ["one", "two"]
    assert user_session.untold_notices() == []
