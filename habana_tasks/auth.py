"""Registry credentials from the standard auth files (podman's, then Docker's), never from argv."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from habana_tasks import local_files
from habana_tasks.errors import RegistryError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where podman, skopeo and docker look, in their order; REGISTRY_AUTH_FILE overrides all."""
    env = os.environ if env is None else env
    if env.get("REGISTRY_AUTH_FILE"):
        return [Path(env["REGISTRY_AUTH_FILE"])]
    home = Path(env.get("HOME", str(Path.home())))
    files = []
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    else:
        files.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    files.append(
        Path(env.get("XDG_CONFIG_HOME", str(home / ".config"))) / "containers" / "auth.json"
    )
    files.append(Path(env.get("DOCKER_CONFIG", str(home / ".docker"))) / "config.json")
    return files


def netrc_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where requests looks for the package servers' credentials: $NETRC, else ~/.netrc and
    ~/_netrc."""
    env = os.environ if env is None else env
    if env.get("NETRC"):
        return [Path(env["NETRC"]).expanduser()]
    home = Path(env.get("HOME", str(Path.home())))
    return [home / ".netrc", home / "_netrc"]


def check_credential_files(env: Mapping[str, str] | None = None) -> None:
    """Refuse, before any request, an auth or netrc file the tool could not read safely (a
    FIFO, a device, one past its size bound): later lookups read them from worker threads."""
    for path in auth_files(env):
        local_files.check_optional(path, local_files.AUTH_FILE)
    for path in netrc_files(env):
        local_files.check_optional(path, local_files.NETRC)


def _normalise_key(key: str) -> str:
    key = key.removeprefix("https://").removeprefix("http://").rstrip("/")
    if key in ("index.docker.io/v1", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return key.removesuffix("/v1").removesuffix("/v2")


def find_credentials(
    registry: str, repository: str, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The most specific entry (registry/ns/repo before registry) of the first file that has one."""
    wanted = [
        registry + "/" + "/".join(repository.split("/")[:n])
        for n in range(repository.count("/") + 1, 0, -1)
    ] + [registry]
    for path in auth_files(env):
        if not path.exists():
            continue
        try:
            data = json.loads(local_files.read_text(path, local_files.AUTH_FILE))
        except local_files.LocalFileError as exc:
            raise RegistryError(str(exc)) from exc
        except ValueError as exc:
            raise RegistryError(f"{path}: the auth file is not JSON: {exc}") from exc
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        entries = {_normalise_key(k): v for k, v in auths.items() if isinstance(v, dict)}
        for key in wanted:
            entry = entries.get(key)
            if entry and entry.get("auth"):
                if not isinstance(entry["auth"], str):
                    raise RegistryError(f"{path}: auths.{key}.auth is not a string")
                return _decode(path, key, entry["auth"])
    return None


def _decode(path: Path, key: str, encoded: str) -> Credentials:
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: auths.{key}.auth is not base64 of user:password") from exc
    if not user:
        raise RegistryError(f"{path}: auths.{key}.auth holds no user name")
    return Credentials(user, password)
