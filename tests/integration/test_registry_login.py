"""A login made with `podman login`, kept wherever the user's session keeps it (root's
/run/containers/0, a login session's XDG_RUNTIME_DIR, the runtime directory rootless podman
picks for a user who arrived with `su -`), is the one every tool of a build uses: the tool's own
registry client, podman (the toolkit's pull), skopeo (the push) and cosign (signature and
attestations). The registry refuses every request without it. The rootless session runs this
test again as an ordinary user."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from habana_tasks.config import versions_file
from habana_tasks.trust import cosign
from tests.conftest import ROOT, invoke_argv, require_tools
from tests.integration.conftest import KERNELS, UpstreamFixture, route_through
from tests.keys import COSIGN_PASSWORD, cosign_key_pair
from tests.registry_proxy import Faults, basic_challenge, registry_proxy

pytestmark = pytest.mark.integration

USER, PASSWORD = "robot", "login-7d21c0"


def podman_login(registry: str) -> None:
    """As a user logs in: the password on standard input, the file where podman keeps it."""
    subprocess.run(
        ["podman", "login", "--tls-verify=false", "--username", USER, "--password-stdin", registry],
        input=PASSWORD, text=True, check=True, capture_output=True,
    )  # fmt: skip


def client_of(agent: str) -> str:
    """Which program sent a request, by its User-Agent."""
    if agent.startswith("cosign/"):
        return "cosign"
    if agent.startswith("containers/"):
        return "containers/image"  # podman and skopeo
    if agent.startswith("python-requests/"):
        return "the tool"
    return agent


@pytest.mark.parametrize("stale", ["", "/run/user/4242"], ids=["session", "stale"])
def test_a_podman_login_is_every_tools_login(
    test_upstream: UpstreamFixture, tmp_path: Path, stale: str
) -> None:
    """stale: the build runs with another session's XDG_RUNTIME_DIR (`sudo -s`, `su` without
    `-`): a folder that does not exist. The login, made in this session, is found all the same."""
    require_tools("skopeo")
    u = test_upstream.upstream
    faults = Faults(raw=basic_challenge)
    key, public = cosign_key_pair(tmp_path / "keys")
    with registry_proxy(u.registry, faults) as private:
        plain = test_upstream.versions(
            tmp_path / "plain.toml",
            KERNELS[:1],
            repository=f"library/login-{'stale' if stale else 'session'}",
        )
        plain.write_text(
            plain.read_text() + f'\n[cosign]\nkey = "{key}"\npublic_key = "{public}"\n'
        )
        # The library and the toolkit both behind the login.
        versions = route_through(plain, tmp_path / "v1.toml", "repository", u.registry, private)
        versions = route_through(versions, tmp_path / "versions.toml", "image", u.registry, private)
        target = versions_file.load(versions).targets[0]
        podman_login(private)
        try:
            done = subprocess.run(
                invoke_argv("build", "--kernel", target.kernel, "--versions", str(versions)),
                cwd=ROOT, capture_output=True, text=True, check=False, timeout=900,
                env={**os.environ, "HABANA_CACHE_DIR": str(tmp_path / "cache"),
                     cosign.PASSWORD_VARIABLE: COSIGN_PASSWORD,
                     **({"XDG_RUNTIME_DIR": stale} if stale else {})},
            )  # fmt: skip
        finally:
            subprocess.run(["podman", "logout", private], check=False, capture_output=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    logged_in = {client_of(agent) for agent, given in faults.clients if given == expected}
    assert logged_in >= {"the tool", "containers/image", "cosign"}, faults.clients
    # Nothing was sent under another name, and every refused request was asked again with it.
    assert {given for _, given in faults.clients} <= {"", expected}
    pushed = [line for line in faults.seen if line.startswith(("PUT", "POST", "PATCH"))]
    pulled = [line for line in faults.seen if "/upstream/driver-toolkit/" in line]
    assert pushed and pulled, faults.seen
