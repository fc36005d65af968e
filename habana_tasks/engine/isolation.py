"""Which isolation `podman build` can use for RUN steps on this host.

Some hosts cannot start containers with podman's default OCI runtime (crun with cgroups v1 or
hybrid, runners that are containers themselves, rootless without a cgroup manager). Instead of
relying on the host being configured, the tool asks podman once: it builds a two-file image whose
only RUN step is `/usr/bin/true`. If that fails, every build uses chroot isolation, which needs no
runtime. The answer is remembered per host (podman version, boot, user, containers.conf), so the
probe costs about half a second once. An explicit choice always wins and is never probed:
`BUILDAH_ISOLATION` (podman's own) or `HABANA_ISOLATION` (ours); either is passed as `--isolation`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from habana_tasks.core.errors import UsageError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.build_failure import runtime_reason

ISOLATIONS = ("oci", "chroot", "rootless")
FALLBACK = "chroot"
PROBE_BINARY = Path("/usr/bin/true")
CONTAINERS_CONFS = (
    Path("/usr/share/containers/containers.conf"),
    Path("/etc/containers/containers.conf"),
    Path("~/.config/containers/containers.conf").expanduser(),
)


@dataclass(frozen=True)
class Isolation:
    """The isolation to build with: `flag` is what goes after --isolation (None: podman decides)."""

    flag: str | None
    source: str  # "BUILDAH_ISOLATION", "HABANA_ISOLATION", "probe" or "cached probe"
    reason: str

    @property
    def notice(self) -> str | None:
        """The one line a run prints when the tool, not the user, chose a fallback."""
        if self.flag == FALLBACK and self.source.endswith("probe"):
            return (
                f"podman cannot run containers here ({self.reason}); "
                f"building with --isolation {FALLBACK}"
            )
        return None


def explicit_choice(env: Mapping[str, str]) -> Isolation | None:
    """The user's own choice, if any; an unknown value is refused before anything runs."""
    for name in ("BUILDAH_ISOLATION", "HABANA_ISOLATION"):
        value = env.get(name, "").strip()
        if not value:
            continue
        if value not in ISOLATIONS:
            raise UsageError(
                f"environment {name}={value!r}: expected one of {', '.join(ISOLATIONS)}"
            )
        # podman reads BUILDAH_ISOLATION itself; the flag repeats it so that every build's
        # network follows the isolation actually used (chroot cannot take --network none).
        return Isolation(value, name, f"{name}={value} set by the user")
    return None


def host_key(runner: ProcessRunner, env: Mapping[str, str]) -> str:
    """What the answer depends on: podman's version, this boot, the user, podman's config."""
    version = runner.run(["podman", "--version"], keep_output=True).text.strip()
    parts = [version, socket.gethostname(), str(os.getuid()), _boot_id()]
    for conf in (*CONTAINERS_CONFS, *_env_confs(env)):
        parts.append(f"{conf}={_file_digest(conf)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _env_confs(env: Mapping[str, str]) -> list[Path]:
    names = ("CONTAINERS_CONF", "CONTAINERS_CONF_OVERRIDE")
    return [Path(env[name]) for name in names if name in env]


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "absent"


def probe(runner: ProcessRunner, flag: str | None = None) -> Isolation:
    """Build a FROM-scratch image whose RUN step execs /usr/bin/true with podman's defaults
    (or with --isolation flag, to learn whether that isolation works here)."""
    with tempfile.TemporaryDirectory(prefix="habana-isolation-") as tmp:
        context = Path(tmp)
        for source in (PROBE_BINARY, *shared_libraries(runner, PROBE_BINARY)):
            target = context / "rootfs" / source.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.resolve(), target)
        (context / "Containerfile").write_text(
            f'FROM scratch\nCOPY rootfs/ /\nRUN ["{PROBE_BINARY}"]\n'
        )
        iidfile = context / "image-id"
        done = runner.run(
            [
                "podman",
                "build",
                "--no-cache",
                "--quiet",
                "--pull=never",
                "--iidfile",
                str(iidfile),
                *(["--isolation", flag] if flag else []),
                # As every build runs: a runtime that cannot run a step without a network
                # cannot build here.
                *(["--network", "none"] if flag != FALLBACK else []),
                str(context),
            ],
            check=False,
        )
        if iidfile.is_file():
            runner.run(["podman", "rmi", "--force", iidfile.read_text().strip()], check=False)
    if done.returncode == 0:
        return Isolation(flag, "probe", f"podman runs RUN steps with {flag or 'its default'}")
    return Isolation(FALLBACK, "probe", _cause(done.tail))


def shared_libraries(runner: ProcessRunner, binary: Path) -> list[Path]:
    """The libraries and loader a dynamically linked binary needs, as ldd lists them."""
    done = runner.run(["ldd", str(binary)], keep_output=True, check=False)
    found = []
    for line in done.output:
        for word in line.split():
            if word.startswith("/") and Path(word).exists():
                found.append(Path(word))
    return found


def _cause(tail: tuple[str, ...]) -> str:
    """The runtime's own complaint, else the last line podman printed."""
    lines = [line.strip() for line in tail if line.strip()]
    if reason := runtime_reason(lines):
        return reason[:160]
    return lines[-1][:160] if lines else "the RUN step failed"


def default_state_file() -> Path:
    """Per user, not per project: the answer is a fact about the host."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "habana-ai-driver" / "build-isolation.json"


class BuildIsolation:
    """Decides once, on first use, and tells `announce` when it chose the fallback."""

    def __init__(
        self,
        runner: ProcessRunner,
        *,
        announce: Callable[[str], None] | None = None,
        state_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.runner = runner
        self.announce = announce
        self.state_file = state_file or default_state_file()
        self.env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._chosen: Isolation | None = None

    def choose(self) -> Isolation:
        with self._lock:
            if self._chosen is None:
                self._chosen = self._decide()
                if self.announce and (notice := self._chosen.notice):
                    self.announce(notice)
            return self._chosen

    def _decide(self) -> Isolation:
        if chosen := explicit_choice(self.env):
            return chosen
        key = host_key(self.runner, self.env)
        remembered = self._load().get(key)
        if remembered is not None:
            return Isolation(remembered["flag"], "cached probe", remembered["reason"] or "")
        found = probe(self.runner)
        self._store(key, found)
        return found

    def _load(self) -> dict[str, dict[str, str | None]]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _store(self, key: str, found: Isolation) -> None:
        data = self._load()
        data[key] = {k: v for k, v in asdict(found).items() if k != "source"}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            tmp.replace(self.state_file)
        except OSError:
            # An unwritable cache only costs a probe next time; the answer itself stands.
            return
