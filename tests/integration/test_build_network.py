"""No build reaches any network, whichever way its isolation was chosen: podman's own
BUILDAH_ISOLATION, the tool's HABANA_ISOLATION (each of oci, chroot, rootless), the probe's
answer and its fallback. Each case really builds, through Podman.build as every image is built,
an image whose only step connects to a docker-registry on this host: the step must fail. The
same step given the host's network reaches the registry, so the probe itself can see a route.

The `tests` session runs this as root; the `rootless` session runs the same file as an ordinary
user with rootless podman."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import local_upstream
from habana_tasks.core.errors import BuildStepError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.isolation import ISOLATIONS, BuildIsolation, shared_libraries
from habana_tasks.engine.podman import UNSHARED, USER_UNSHARED, BuildSpec, Podman
from tests.conftest import free_port, require_tools

pytestmark = pytest.mark.integration

PROBE = Path("/bin/bash")
BROKEN_RUNTIME = '#!/bin/sh\necho "this runtime cannot start containers" >&2\nexit 1\n'
# (variable, value): how the isolation is chosen; None: the tool's probe decides.
CHOICES = [
    *((name, value) for name in ("BUILDAH_ISOLATION", "HABANA_ISOLATION") for value in ISOLATIONS),
    ("probe", None),
    ("probe fallback", None),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry of its own on 127.0.0.1: what a build step must not reach."""
    require_tools("podman", "docker-registry", "unshare")
    root = tmp_path_factory.mktemp("registry")
    upstream = local_upstream.Upstream(root, registry_port=free_port(), http_port=free_port())
    local_upstream.start_registry(upstream)
    yield upstream.registry
    local_upstream.stop(upstream)


def probe_context(directory: Path, registry: str) -> Path:
    """FROM scratch, bash and its libraries copied in; the step exits 0 only when the connect
    fails, and says which way it went."""
    host, port = registry.split(":")
    for source in (PROBE, *shared_libraries(ProcessRunner(), PROBE)):
        target = directory / "rootfs" / source.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.resolve().read_bytes())
        target.chmod(0o755)
    (directory / "Containerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        f'RUN ["/bin/bash", "-c", "if exec 3<>/dev/tcp/{host}/{port}; '
        f'then echo REACHED {registry}; exit 1; else echo no route to {registry}; fi"]\n'
    )
    return directory


@pytest.mark.parametrize(("variable", "value"), CHOICES)
def test_no_isolation_however_chosen_lets_a_build_step_reach_the_network(
    registry: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str | None,
) -> None:
    context = probe_context(tmp_path / "context", registry)
    env = {variable: value} if value else {}
    if variable == "probe fallback":  # a runtime that cannot start containers: chroot
        runtime = tmp_path / "broken-runtime"
        runtime.write_text(BROKEN_RUNTIME)
        runtime.chmod(0o755)
        conf = tmp_path / "containers.conf"
        conf.write_text(
            f'[engine]\nruntime = "broken"\n[engine.runtimes]\nbroken = ["{runtime}"]\n'
        )
        monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    for name, setting in env.items():  # podman reads BUILDAH_ISOLATION itself
        monkeypatch.setenv(name, setting)
    runner = ProcessRunner()
    said: list[str] = []
    isolation = BuildIsolation(runner, announce=said.append, state_file=tmp_path / "s.json")
    podman = Podman(runner, isolation)
    lines: list[str] = []
    spec = BuildSpec(context, context / "Containerfile", tmp_path / "iid", no_cache=True)
    image = podman.build(spec, lines.append)
    chosen = isolation.choose()
    if variable == "probe fallback":
        assert chosen.flag == "chroot" and chosen.source == "probe"
    elif value is not None:
        assert (chosen.flag, chosen.source) == (value, variable)
    if chosen.flag == "chroot":  # podman itself in an empty namespace, made as this user can
        assert podman.chroot_network() == (UNSHARED if os.geteuid() == 0 else USER_UNSHARED)
    assert f"no route to {registry}" in lines, lines
    assert f"REACHED {registry}" not in lines  # exact lines: the STEP line quotes both
    # Nothing had to be said: the build was cut off the network, not left on the host's.
    assert not any("share this host's network" in line for line in said)
    runner.run(["podman", "rmi", "--force", image])

    # The control: the same step, given the host's network, reaches the registry.
    with pytest.raises(BuildStepError) as reached:
        podman.build(
            BuildSpec(context, context / "Containerfile", tmp_path / "iid2", network="host")
        )
    assert f"REACHED {registry}" in [line.strip() for line in reached.value.tail]
