"""Section 8 of `nox -s bench`: one pair built as root and as an ordinary user with rootless
podman (reached with `su -`, no login session), side by side: cold and from the compile cache,
load test on, each the user's `invoke build` as typed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.bench_base import BUILD_KERNELS, BenchBase

# What the user's side prints about itself: the build's seconds and its storage driver.
USER_SECONDS_RE = re.compile(r"^BENCH-SECONDS ([0-9.]+) ([0-9.]+)$", re.MULTILINE)
USER_DRIVER_RE = re.compile(r"^BENCH-DRIVER (\S+)$", re.MULTILINE)
RUNS = (("cold", ("--no-compile-cache",)), ("compile cache hit", ()))
GOAL_RATIO = 2.0
# The rootless session's user, and one whose storage podman made with vfs (its Debian 12 default).
USER, VFS_USER = "habana-ci", "habana-bench-vfs"


class RootlessSection(BenchBase):
    def rootless(self) -> None:
        kernel = BUILD_KERNELS[0]
        shared = Path(tempfile.mkdtemp(prefix="habana-bench-rootless-"))
        shared.chmod(0o755)  # the user reads the versions file from here
        try:
            versions = shared / "versions.toml"
            shutil.copyfile(self.versions_file("rootless", [kernel]), versions)
            versions.chmod(0o644)
            root = {name: self._as_root(kernel, versions, flags) for name, flags in RUNS}
            user: dict[str, dict[str, float]] = {}
            drivers: dict[str, str] = {}
            for account, chosen in ((USER, ""), (VFS_USER, "export STORAGE_DRIVER=vfs && ")):
                self._as_user(f"{chosen}scripts/install-deps >/dev/null", account)
                user[account] = {
                    name: self._user_build(kernel, versions, flags, account, chosen)
                    for name, flags in RUNS
                }
                said = self._as_user(
                    "echo BENCH-DRIVER "
                    "$(podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null)",
                    account,
                )
                found = USER_DRIVER_RE.search(said)
                drivers[account] = found.group(1) if found else "unknown"
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        rows = [
            f"| {name} | {root[name]:.1f} s | {user[USER][name]:.1f} s "
            f"({user[USER][name] / root[name]:.2f}×) | {user[VFS_USER][name]:.1f} s "
            f"({user[VFS_USER][name] / root[name]:.2f}×) |"
            for name, _ in RUNS
        ]
        hit = "compile cache hit"
        self.results.data["rootless"] = {
            "root": root,
            "rootless": user[USER],
            "rootless_vfs": user[VFS_USER],
            "ratio_hit": user[USER][hit] / root[hit],
            "driver": drivers[USER],
            "vfs_driver": drivers[VFS_USER],
        }
        self.results.sections.append(
            (
                "8. Root and an ordinary user (rootless podman), one pair",
                f"`invoke build --kernel {kernel} --force` (load test on) as root and as "
                "ordinary users reached with `su -` (no login session), each in its own checkout "
                "and cache, cold (`--no-compile-cache`) then from the compile cache; n = 1, "
                "the command's wall time. One user's storage was made by the tool "
                f"({drivers[USER]}: nobody had chosen, the kernel has rootless overlay), the "
                f"other's with `STORAGE_DRIVER=vfs` ({drivers[VFS_USER]}: Debian 12 podman's own "
                "choice for a new user).\n\n"
                "| run | root | ordinary user | ordinary user, vfs storage |\n"
                "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n",
            )
        )

    def _as_root(self, kernel: str, versions: Path, flags: tuple[str, ...]) -> float:
        cache = self.work / "cache-rootless-root"
        started = time.perf_counter()
        subprocess.run(
            [str(self.project.root / ".venv" / "bin" / "invoke"), "build", "--kernel", kernel,
             "--versions", str(versions), "--force", *flags],
            cwd=self.project.root, check=True, capture_output=True,
            env={**_environ(), "HABANA_CACHE_DIR": str(cache)},
        )  # fmt: skip
        return time.perf_counter() - started

    def _user_build(
        self, kernel: str, versions: Path, flags: tuple[str, ...], account: str, prefix: str
    ) -> float:
        command = (
            f"{prefix}start=$EPOCHREALTIME && .venv/bin/invoke build --kernel "
            f"{kernel} --versions {versions} --force {' '.join(flags)} >/dev/null"
            ' && echo "BENCH-SECONDS $start $EPOCHREALTIME"'
        )
        found = USER_SECONDS_RE.search(self._as_user(command, account))
        assert found, "the user's build printed no time"
        return float(found.group(2)) - float(found.group(1))

    def _as_user(self, command: str, account: str) -> str:
        done = subprocess.run(
            [str(self.project.root / "scripts" / "as-unprivileged-user"), command],
            cwd=self.project.root, check=True, capture_output=True, text=True,
            env={**_environ(), "HABANA_TEST_ARRIVAL": "su", "HABANA_TEST_USER": account},
        )  # fmt: skip
        return done.stdout


def _environ() -> dict[str, str]:
    """This process's environment without the bench's own TLS front's CA (the pair is built
    over plain HTTP, as the user's own shell would)."""
    return {k: v for k, v in os.environ.items() if k != "REQUESTS_CA_BUNDLE"}
