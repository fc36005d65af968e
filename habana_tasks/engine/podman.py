"""podman command lines (pure, asserted in tests) and the operations that run them."""

from __future__ import annotations

import os
import shlex
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from habana_tasks.core.errors import CommandError
from habana_tasks.core.log_cause import cause_of
from habana_tasks.core.process import LineSink, ProcessRunner
from habana_tasks.engine import build_failure
from habana_tasks.engine.isolation import BuildIsolation

PODMAN = "podman"
LAYOUT_NAME = "image"  # the one image a layout written by push_to_layout holds
# chroot isolation cannot take --network none: its RUN steps share podman's own network
# namespace. So podman itself runs in a new, empty one: as root with `unshare --net`; as an
# ordinary user inside podman's own user namespace (`podman unshare`), where the user may make one.
UNSHARED = "unshared"
USER_UNSHARED = "user-unshared"
EMPTY_NETWORK = {
    UNSHARED: ("unshare", "--net", "--"),
    USER_UNSHARED: (PODMAN, "unshare", "unshare", "--net", "--"),
}


def shared_network_notice(why: str) -> str:
    """The one line a run prints when its chroot builds cannot be cut off the network."""
    return (
        f"chroot isolation cannot cut builds off the network here ({why}): builds share this "
        "host's network (nothing in the Dockerfile downloads anything)"
    )


@dataclass(frozen=True)
class BuildSpec:
    """Everything `podman build` is given; build args and labels never hold secrets."""

    context: Path
    containerfile: Path
    iidfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    tags: Sequence[str] = ()
    no_cache: bool = False
    # --isolation, chosen per host by habana_tasks.engine.isolation (None: podman's own default).
    isolation: str | None = None
    # Build secrets: id -> file. Only the path is on the command line; podman mounts the file
    # for the RUN steps that ask for it and never stores it in a layer.
    secrets: Mapping[str, Path] = field(default_factory=dict)
    # The same inputs give the same image: one timestamp for files, history and `created`
    # (None: podman's clock, only for images that are not published).
    timestamp: int | None = None
    # Manifest annotations (OCI format): what deciding "is this image current" reads.
    annotations: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None  # build up to this stage only
    # No RUN step reaches any network: everything a build uses is in its context or its FROM
    # images. Only the local upstream's stand-ins, which play a vendor's build, set "host".
    # UNSHARED, USER_UNSHARED: podman runs in an empty network namespace (chroot isolation).
    network: str = "none"

    @property
    def argv(self) -> list[str]:
        # --pull=never: every FROM image was pulled by digest before, one at a time, so that
        # parallel builds never pull into the shared storage at once. A build that takes nothing
        # from the layer cache keeps no layers for it either: each stage is committed once, not
        # once per step (an image's twenty labels cost twenty commits with --layers).
        layers = "--layers=false" if self.no_cache else "--layers"
        argv = [PODMAN, "build", "--pull=never", layers, "--file", str(self.containerfile)]
        argv += ["--iidfile", str(self.iidfile)]
        if self.network not in EMPTY_NETWORK:
            argv += ["--network", self.network]
        if self.timestamp is not None:
            argv += ["--timestamp", str(self.timestamp)]
        if self.target:
            argv += ["--target", self.target]
        if self.isolation:
            argv += ["--isolation", self.isolation]
        if self.no_cache:
            argv.append("--no-cache")
        for key, value in sorted(self.build_args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in sorted(self.labels.items()):
            argv += ["--label", f"{key}={value}"]
        for key, value in sorted(self.annotations.items()):
            argv += ["--annotation", f"{key}={value}"]
        for tag in self.tags:
            argv += ["--tag", tag]
        for secret, path in sorted(self.secrets.items()):
            argv += ["--secret", f"id={secret},src={path}"]
        argv.append(str(self.context))
        return [*EMPTY_NETWORK.get(self.network, ()), *argv]


def tls_flag(tls_verify: bool) -> list[str]:
    return [] if tls_verify else ["--tls-verify=false"]


def pull_argv(image: str, tls_verify: bool = True) -> list[str]:
    return [PODMAN, "pull", "--quiet", *tls_flag(tls_verify), image]


def push_argv(
    image_id: str, destination: str, digestfile: Path, tls_verify: bool = True
) -> list[str]:
    return [
        PODMAN,
        "push",
        "--quiet",
        *tls_flag(tls_verify),
        "--digestfile",
        str(digestfile),
        image_id,
        f"docker://{destination}",
    ]


def export_argv(container: str, output: Path) -> list[str]:
    return [PODMAN, "export", "--output", str(output), container]


class Podman:
    """The podman operations the pipeline needs, all through the one process runner."""

    def __init__(self, runner: ProcessRunner, isolation: BuildIsolation | None = None) -> None:
        self.runner = runner
        self.isolation = isolation or BuildIsolation(runner)
        self._lock = threading.Lock()
        self._chroot_network: str | None = None  # decided on the first chroot build

    def _run(self, argv: Sequence[str], on_line: LineSink | None = None) -> None:
        """A podman command whose failure is the host's when its output says so (storage)."""
        try:
            self.runner.run(argv, on_line=on_line)
        except CommandError as exc:
            raise build_failure.host_fault(exc) or exc from None

    def image_exists(self, image: str) -> bool:
        done = self.runner.run([PODMAN, "image", "exists", image], check=False)
        return done.returncode == 0

    def pull(self, image: str, tls_verify: bool, on_line: LineSink | None = None) -> None:
        self._run(pull_argv(image, tls_verify), on_line)

    def ensure(self, image: str, tls_verify: bool, on_line: LineSink | None = None) -> bool:
        """Pull the image unless local storage has it; True when it was pulled."""
        if self.image_exists(image):
            return False
        self.pull(image, tls_verify, on_line)
        return True

    def build(self, spec: BuildSpec, on_line: LineSink | None = None) -> str:
        """Build with the isolation this host supports (asked once per run); the image ID."""
        if spec.isolation is None:
            spec = replace(spec, isolation=self.isolation.choose().flag)
        if spec.isolation == "chroot" and spec.network == "none":
            spec = replace(spec, network=self.chroot_network(on_line))
        spec.iidfile.unlink(missing_ok=True)
        for last in (False, True):  # a runtime failure of the moment is built again once
            try:
                self.runner.run(spec.argv, on_line=on_line)
                break
            except CommandError as exc:
                if last or not build_failure.runtime_busy(exc):
                    raise build_failure.classified(exc) from None
                if on_line is not None:
                    on_line(
                        f"the container runtime failed ({cause_of(exc.tail)}); building again once"
                    )
        return spec.iidfile.read_text().strip()

    def chroot_network(self, on_line: LineSink | None = None) -> str:
        """The network of chroot builds, tried once: an empty namespace (UNSHARED as root,
        USER_UNSHARED otherwise); "host" when neither can be made here, said once, by name."""
        with self._lock:
            if self._chroot_network is None:
                mode = UNSHARED if os.geteuid() == 0 else USER_UNSHARED
                try:
                    self.runner.run([*EMPTY_NETWORK[mode], "true"])
                    self._chroot_network = mode
                except CommandError as exc:
                    if exc.returncode < 0:  # stopped: nothing was learnt
                        raise
                    self._chroot_network = "host"
                    why = f"{shlex.join(EMPTY_NETWORK[mode])}: {cause_of(exc.tail)}"
                    if announce := self.isolation.announce or on_line:
                        announce(shared_network_notice(why))
            return self._chroot_network

    def remove_image(self, image_id: str) -> None:
        """An intermediate image (the compile's) removed; one that stays only takes space."""
        self.runner.run([PODMAN, "image", "rm", "--force", image_id], check=False)

    def tag(self, image_id: str, name: str) -> None:
        self._run([PODMAN, "tag", image_id, name])

    def push(
        self,
        image_id: str,
        destination: str,
        digestfile: Path,
        tls_verify: bool,
        on_line: LineSink | None = None,
    ) -> str:
        digestfile.unlink(missing_ok=True)
        self._run(push_argv(image_id, destination, digestfile, tls_verify), on_line)
        return digestfile.read_text().strip()

    def push_to_layout(
        self, image_id: str, layout: Path, digestfile: Path, on_line: LineSink | None = None
    ) -> str:
        """Write the image into a local OCI layout as a push writes it (the same compression):
        its manifest digest is the one a registry push would record."""
        digestfile.unlink(missing_ok=True)
        if layout.exists():
            shutil.rmtree(layout)
        argv = [PODMAN, "push", "--quiet", "--digestfile", str(digestfile), image_id]
        self._run([*argv, f"oci:{layout}:{LAYOUT_NAME}"], on_line)
        return digestfile.read_text().strip()

    @contextmanager
    def _container(self, image: str, on_line: LineSink | None = None) -> Iterator[str]:
        """A created, never started container of the image, removed afterwards."""
        name = f"habana-{uuid.uuid4().hex[:12]}"
        self._run([PODMAN, "create", "--name", name, image, "/bin/true"], on_line)
        try:
            yield name
        finally:
            self.runner.run([PODMAN, "rm", "--force", name], check=False)

    def export_rootfs(self, image: str, output: Path, on_line: LineSink | None = None) -> None:
        """The image's filesystem as a tar, without running anything inside it."""
        with self._container(image, on_line) as name:
            self._run(export_argv(name, output), on_line)

    def copy_files_from_image(
        self, image: str, wanted: Mapping[str, Iterable[str]], dest_dir: Path
    ) -> dict[str, str]:
        """Copy files out of one created (never started) container: each name in `wanted` gets
        the first of its candidate paths that the image holds as a file. Returns name -> path."""
        found: dict[str, str] = {}
        with self._container(image) as name:
            for dest_name, candidates in wanted.items():
                dest = dest_dir / dest_name
                for path in candidates:
                    done = self.runner.run([PODMAN, "cp", f"{name}:{path}", str(dest)], check=False)
                    # A link copied as a link would name a path on this host: not the file.
                    if done.returncode == 0 and dest.is_file() and not dest.is_symlink():
                        found[dest_name] = path
                        break
                    if dest.is_symlink() or dest.is_file():
                        dest.unlink()
                    elif dest.is_dir():
                        shutil.rmtree(dest)
        return found

    def image_label(self, image: str, label: str) -> str | None:
        try:
            done = self.runner.run(
                [PODMAN, "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image],
                keep_output=True,
            )
        except CommandError:
            return None
        value = done.text.strip()
        return value if value and value != "<no value>" else None

    def import_tarball(self, tarball: Path, name: str, changes: Sequence[str]) -> None:
        argv = [PODMAN, "import"]
        for change in changes:
            argv += ["--change", change]
        self._run([*argv, str(tarball), name])
