"""The user the tool runs as, however they arrived: a login session, `su -`, `sudo -iu`,
`runuser`, cron or a CI runner that switched user (no XDG_RUNTIME_DIR), or a variable left over
from another user. Every child (podman, skopeo, cosign) and the tool's own registry client
see one runtime directory, the one rootless podman would choose itself, so a login made with
`podman login` is found by all of them. Rootless podman on Debian 12 picks the slow `vfs` storage
driver unless told otherwise; the tool tells it what newer podman picks by itself (native
overlay on a kernel that has it, else fuse-overlayfs where usable). What a rootless host lacks
(subordinate ids, newuidmap, a home podman can store images in) is named before anything runs."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from habana_tasks.core.errors import HostError

# Rootless overlay without fuse-overlayfs: the kernel rule newer containers/storage applies
# itself (canUseRootlessOverlay: native overlay in user namespaces from Linux 5.13).
NATIVE_OVERLAY_KERNEL = (5, 13)
KERNEL_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)")
STORAGE_CONFS = (Path("/etc/containers/storage.conf"), Path("/usr/share/containers/storage.conf"))
# Filesystems rootless podman cannot keep its storage on ("podman does not support container
# storage over NFS", containers-storage.conf(5)): the server will not hand files to the user's
# subordinate ids. Only network filesystems known to refuse; a cluster filesystem is let be.
NETWORK_FILESYSTEMS = frozenset(
    ("nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "ncpfs", "fuse.sshfs")
)
SUBID_RANGE = "100000-165535"
PRIVATE = 0o700  # of the mode bits 0o722: only the owner may write (podman's test)
TEMP_DIR = "/tmp"  # noqa: S108  (where podman puts podman-run-<uid> when TMPDIR is unset)
LOCAL_STORAGE = "/var/tmp/{user}/containers/storage"  # noqa: S108  (a suggestion in a fix)
ROOT_RUNTIME_DIR = "/run/containers/0"  # root's auth file's folder without XDG_RUNTIME_DIR
MOUNTINFO_POINT = 4  # the mount point's field in /proc/self/mountinfo


@dataclass(frozen=True)
class Session:
    """What every child is given on top of this process's environment, and why."""

    uid: int
    runtime_dir: Path | None  # None as root: the tools use /run/containers/0
    environment: Mapping[str, str] = field(default_factory=dict)
    storage: str = ""  # the storage driver the tool asked podman for ("" : podman's own choice)
    notices: tuple[str, ...] = ()
    unset: tuple[str, ...] = ()  # variables no child is given


def _owned_private_dir(path: Path, uid: int) -> bool:
    """A directory of the user's that nobody else can write (podman's own test)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and st.st_mode & 0o722 == PRIVATE


def runtime_dir(
    env: Mapping[str, str], uid: int, run_user: Path = Path("/run/user")
) -> tuple[Path, str | None]:
    """The runtime directory rootless podman uses, and a notice when the given one is unusable.
    XDG_RUNTIME_DIR when it is the user's; else /run/user/<uid> when it is; else
    $TMPDIR/podman-run-<uid>, made private if missing (podman 4's own order)."""
    notice = None
    given = env.get("XDG_RUNTIME_DIR", "")
    if given:
        path = Path(given)
        if _owned_private_dir(path, uid) and os.access(path, os.W_OK | os.X_OK):
            return path, None
        notice = f"XDG_RUNTIME_DIR={given} is not this user's own private directory"
    run_dir, tmp_dir = (
        run_user / str(uid),
        Path(env.get("TMPDIR") or TEMP_DIR) / f"podman-run-{uid}",
    )
    with contextlib.suppress(OSError):
        tmp_dir.mkdir(mode=0o700, exist_ok=True)
    for path in (run_dir, tmp_dir):
        if _owned_private_dir(path, uid):
            if notice:
                notice += f"; podman, skopeo and cosign use {path}"
            return path, notice
    raise HostError(
        f"no private runtime directory for uid {uid}: {tmp_dir} exists and is not the user's "
        f"own with mode 0700 (fix: remove it, or log in so that {run_dir} exists)"
    )


def _toml_storage(path: Path) -> dict[str, object]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    storage = data.get("storage")
    return storage if isinstance(storage, dict) else {}


def user_storage_conf(env: Mapping[str, str], home: Path) -> Path:
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return config_home / "containers" / "storage.conf"


def graph_root(env: Mapping[str, str], home: Path, user: str, uid: int) -> Path:
    """Where rootless podman keeps images: the user's storage.conf graphroot, the system's
    rootless_storage_path, else $XDG_DATA_HOME/containers/storage."""
    given = _toml_storage(user_storage_conf(env, home)).get("graphroot")
    if not isinstance(given, str) or not given:
        system = next((s for s in map(_toml_storage, STORAGE_CONFS) if s), {})
        given = system.get("rootless_storage_path")
    if isinstance(given, str) and given:
        text = given.replace("$HOME", str(home)).replace("$UID", str(uid)).replace("$USER", user)
        return Path(text).expanduser()
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "containers" / "storage"


def _explicit_storage(env: Mapping[str, str], home: Path) -> str | None:
    """Who chose the storage driver already, if anyone: the tool then adds nothing."""
    for name in ("STORAGE_DRIVER", "CONTAINERS_STORAGE_CONF"):
        if env.get(name):
            return name
    if user_storage_conf(env, home).is_file():
        return str(user_storage_conf(env, home))
    for conf in STORAGE_CONFS:
        if _toml_storage(conf).get("driver"):
            return str(conf)
    return None


def kernel_version(release: str) -> tuple[int, int]:
    found = KERNEL_RELEASE_RE.match(release)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


@dataclass(frozen=True)
class Storage:
    """The storage driver the tool asks rootless podman for ("": the user's or podman's own),
    the variables that say so, and what the run says about it."""

    driver: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    notice: str | None = None


SLOW_VFS = "every build step copies the whole toolkit (rootless builds several times slower)"


def storage_choice(
    env: Mapping[str, str],
    home: Path,
    graph: Path,
    kernel: str,
    fuse_overlayfs: str | None,
    fuse_device: Path = Path("/dev/fuse"),
) -> Storage:
    """podman records its driver when it first creates a user's storage and keeps it: an
    existing vfs storage is left as it is and said once, with what would change it."""
    if _explicit_storage(env, home):
        return Storage()
    if (graph / "vfs").is_dir() and not (graph / "overlay").is_dir():
        why = f"podman's storage in {graph} was made with the vfs driver: {SLOW_VFS}"
        return Storage("vfs", {}, f"{why}; `podman system reset` (it deletes this user's "
                       "images) lets the tool use overlay")  # fmt: skip
    if kernel_version(kernel) >= NATIVE_OVERLAY_KERNEL:
        return Storage("overlay", {"STORAGE_DRIVER": "overlay"})
    if fuse_overlayfs and os.access(fuse_device, os.R_OK | os.W_OK):
        program = f"overlay.mount_program={fuse_overlayfs}"
        return Storage("overlay", {"STORAGE_DRIVER": "overlay", "STORAGE_OPTS": program})
    return Storage("vfs", {}, f"rootless podman uses the vfs driver here (kernel {kernel} has no "
                   f"rootless overlay and fuse-overlayfs is missing or /dev/fuse not usable): "
                   f"{SLOW_VFS}; install fuse-overlayfs where /dev/fuse is usable")  # fmt: skip


def user_name(uid: int) -> str:
    """The account's name (what /etc/subuid names), whatever USER says after `su`."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.cache
def current() -> Session:
    """This process's session, decided once (nothing runs: files and the kernel's release)."""
    return session(os.environ, os.getuid())


_TOLD: set[str] = set()


def untold_notices() -> list[str]:
    """The session's notices this process has not said yet: each is said once per run."""
    fresh = [notice for notice in current().notices if notice not in _TOLD]
    _TOLD.update(fresh)
    return fresh


def root_runtime_dir(env: Mapping[str, str]) -> Path | None:
    """Root's XDG_RUNTIME_DIR when it names a folder (podman reads its auth file there); None
    when unset or gone (the children are given none: /run/containers/0 is used)."""
    given = env.get("XDG_RUNTIME_DIR", "")
    return Path(given) if given and Path(given).is_dir() else None


def session(env: Mapping[str, str], uid: int) -> Session:
    if uid == 0:
        # Root's podman reads XDG_RUNTIME_DIR's auth file when it is set; one naming no folder
        # (left by a user's session: `sudo -s`, `su` without `-`) fails every registry call.
        given = env.get("XDG_RUNTIME_DIR", "")
        if given and root_runtime_dir(env) is None:
            gone = (
                f"XDG_RUNTIME_DIR={given} does not exist; podman, skopeo and cosign use "
                f"{ROOT_RUNTIME_DIR}"
            )
            return Session(uid, None, notices=(gone,), unset=("XDG_RUNTIME_DIR",))
        return Session(uid, None)
    home = Path(env.get("HOME") or Path.home())
    path, notice = runtime_dir(env, uid)
    user = user_name(uid)
    graph = graph_root(env, home, user, uid)
    storage = storage_choice(env, home, graph, os.uname().release, shutil.which("fuse-overlayfs"))
    environment = {"XDG_RUNTIME_DIR": str(path), **storage.environment}
    notices = tuple(n for n in (notice, storage.notice) if n)
    return Session(uid, path, environment, storage.driver, notices)


@dataclass(frozen=True)
class HostFiles:
    """Where the host says what it grants (files, so that a test can point elsewhere)."""

    subuid: Path = Path("/etc/subuid")
    subgid: Path = Path("/etc/subgid")
    nsswitch: Path = Path("/etc/nsswitch.conf")
    mountinfo: Path = Path("/proc/self/mountinfo")
    tool_dirs: tuple[str, ...] = ("/usr/bin", "/bin")  # where uidmap installs, whatever PATH says


def _has_subids(path: Path, user: str, uid: int) -> bool:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        owner, _, rest = line.strip().partition(":")
        start, _, count = rest.partition(":")
        if owner in (user, str(uid)) and start.isdigit() and count.isdigit() and int(count) > 0:
            return True
    return False


def _subids_elsewhere(nsswitch: Path) -> bool:
    """Subordinate ids served by another NSS source (sss, ldap): the files do not tell."""
    try:
        lines = nsswitch.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return any(
        line.split(":", 1)[0].strip() == "subid" and line.split(":", 1)[1].split() != ["files"]
        for line in lines
        if ":" in line
    )


def _setuid_or_capable(path: str) -> bool:
    st = os.stat(path)
    if st.st_uid == 0 and st.st_mode & stat.S_ISUID:
        return True
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def filesystem_of(path: Path, mountinfo: Path) -> str:
    """The type of the filesystem holding path (its nearest existing ancestor), from the
    mount table; "" when it cannot be read."""
    while not path.exists() and path != path.parent:
        path = path.parent
    target = str(path.resolve())
    best, kind = "", ""
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) <= MOUNTINFO_POINT or not after:
            continue
        point = parts[MOUNTINFO_POINT].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, after.split()[0]
    return kind


def rootless_problems(
    env: Mapping[str, str], uid: int, files: HostFiles = HostFiles()
) -> list[str]:
    """What keeps rootless podman from working for this user, each with the command that fixes
    it; empty when nothing is missing."""
    home = Path(env.get("HOME") or Path.home())
    user = user_name(uid)
    problems = []
    if not _subids_elsewhere(files.nsswitch):
        for kind, path in (("uid", files.subuid), ("gid", files.subgid)):
            if not _has_subids(path, user, uid):
                problems.append(
                    f"{user} has no subordinate {kind}s in {path} (fix: sudo usermod "
                    f"--add-sub{kind}s {SUBID_RANGE} {user} && podman system migrate)"
                )
    for tool in ("newuidmap", "newgidmap"):
        found = shutil.which(tool, path=os.pathsep.join([env.get("PATH", ""), *files.tool_dirs]))
        if found is None:
            problems.append(f"{tool} is missing (fix: sudo apt-get install uidmap)")
        elif not _setuid_or_capable(found):
            problems.append(
                f"{found} is neither setuid root nor file-capable "
                "(fix: sudo apt-get install --reinstall uidmap)"
            )
    graph = graph_root(env, home, user, uid)
    existing = graph
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != graph and not os.access(existing, os.W_OK | os.X_OK):
        problems.append(
            f"podman cannot create its storage {graph}: {existing} is not writable "
            f"(HOME={home}; fix: give {user} a writable home, or set graphroot in "
            f"{user_storage_conf(env, home)})"
        )
    kind = filesystem_of(graph, files.mountinfo)
    if kind in NETWORK_FILESYSTEMS:
        local = LOCAL_STORAGE.format(user=user)
        problems.append(
            f"podman's storage {graph} is on {kind}, which cannot hold a rootless user's "
            f'images (fix: printf \'[storage]\\ndriver = "overlay"\\ngraphroot = "{local}"\\n\''
            f" > {user_storage_conf(env, home)})"
        )
    return problems


def check_host(
    env: Mapping[str, str] | None = None, uid: int | None = None, files: HostFiles = HostFiles()
) -> None:
    """Refuse, before anything runs, a rootless host podman cannot work on (exit 6)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    problems = rootless_problems(env, uid, files) if uid != 0 else []
    if problems:
        raise HostError("rootless podman cannot work here: " + "; ".join(problems))
