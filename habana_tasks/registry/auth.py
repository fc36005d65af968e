"""Who the tool is at a registry: credentials from the standard auth files (podman's, then
Docker's, never from argv) and the challenge / token flow that turns them into an
Authorization header, one token request per registry and scope."""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import requests
from requests.utils import parse_dict_header

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core import local_files, user_session
from habana_tasks.core.errors import RegistryError, TransientHTTPError
from habana_tasks.core.http_client import HTTPClient, host_of, short_reason
from habana_tasks.registry.responses import json_object, raise_for_status

ROOT_AUTH_FILE = Path("/run/containers/0/auth.json")
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"  # Docker Hub's key in a Docker config
BASIC_LIFETIME = 3600  # seconds a Basic header is reused before the credentials are read again


def challenge_params(text: str) -> dict[str, str]:
    """A WWW-Authenticate challenge's parameters, by requests' own parser (a quoted value may
    hold commas, as a scope of several actions does); a bare name without a value is dropped."""
    parsed: dict[str, str | None] = parse_dict_header(text)  # type: ignore[no-untyped-call]
    return {name: value for name, value in parsed.items() if value is not None}


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
    files = [runtime_auth_file(env, os.getuid())]
    files.append(
        Path(env.get("XDG_CONFIG_HOME", str(home / ".config"))) / "containers" / "auth.json"
    )
    files.append(Path(env.get("DOCKER_CONFIG", str(home / ".docker"))) / "config.json")
    return files


def runtime_auth_file(env: Mapping[str, str], uid: int) -> Path:
    """podman's first choice: its runtime directory's auth.json. Root's is XDG_RUNTIME_DIR's
    (when that folder exists: the tool gives children none otherwise) or /run/containers/0; an
    ordinary user's is the runtime directory rootless podman itself uses (user_session), never
    /run/containers/<uid>, which root's podman makes unreadable."""
    if uid == 0:
        runtime = user_session.root_runtime_dir(env)
        return runtime / "containers" / "auth.json" if runtime else ROOT_AUTH_FILE
    return user_session.runtime_dir(env, uid)[0] / "containers" / "auth.json"


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


def authfile_environment(authfile: str | None) -> Mapping[str, str] | None:
    """The environment credential lookups read: REGISTRY_AUTH_FILE set to --authfile if given."""
    return {**os.environ, "REGISTRY_AUTH_FILE": authfile} if authfile else None


def credentials_from(authfile: str | None) -> Callable[[str, str], Credentials | None]:
    """A credential lookup that reads --authfile when given, the standard files otherwise."""
    env = authfile_environment(authfile)
    return lambda registry, repository: find_credentials(registry, repository, env)


@contextmanager
def docker_config(reference: str) -> Iterator[dict[str, str]]:
    """The environment a child built on go-containerregistry (cosign) needs to log in as podman
    would: its keychain reads ~/.docker/config.json before podman's files and never
    ~/.config/containers/auth.json, so when podman's order finds credentials for this image's
    repository the child gets a private Docker config holding only those (mode 0600, removed
    as soon as the child is done). Where it finds none, nothing changes: the child's own
    keychain (credential helpers, cloud keychains, podman's runtime file) decides."""
    image = ImageReference.parse(reference)
    found = find_credentials(image.registry, image.repository)
    if found is None:
        yield {}
        return
    key = DOCKER_HUB_CONFIG_KEY if image.registry == "docker.io" else image.registry
    secret = base64.b64encode(f"{found.username}:{found.password}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="habana-registry-login-") as folder:
        config = Path(folder) / "config.json"
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({"auths": {key: {"auth": secret}}}, handle)
        yield {"DOCKER_CONFIG": folder}


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


class TokenFlow:
    """Authorization headers per (host, scope), cached until they expire. Thread-safe: parallel
    requests for one scope wait for a single token request. A host's last usable challenge is
    remembered, so later scopes get their token before asking (no 401 round trip)."""

    def __init__(
        self,
        http: HTTPClient,
        credentials: Callable[[str, str], Credentials | None] = find_credentials,
    ) -> None:
        self.http = http
        self._credentials = credentials
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._challenges: dict[str, str] = {}
        self._scope_locks: dict[tuple[str, str], threading.Lock] = {}

    def known(self, ref: ImageReference, scope: str) -> str | None:
        """The header to send first: a cached one, or one fetched for a host that challenged
        before; None when the host has not asked for anything yet."""
        token = self._cached(ref.api_host, scope)
        known = self._challenges.get(ref.api_host)
        if token is None and known is not None:
            with self._scope_lock(ref.api_host, scope):
                token = self._cached(ref.api_host, scope) or self._authorize(
                    ref, known, scope, own_scope=True
                )
        return token

    def answer(self, ref: ImageReference, scope: str, challenge: str, sent: str | None) -> str:
        """The header to retry with after a 401 carrying `challenge`; `sent` was refused."""
        with self._scope_lock(ref.api_host, scope):
            # Only a usable challenge is shared with the host's other repositories: one
            # repository's odd answer must not fail the lookups of the healthy ones.
            if _usable_challenge(challenge):
                self._challenges[ref.api_host] = challenge
            fresh = self._cached(ref.api_host, scope)
            if fresh is None or fresh == sent:
                fresh = self._authorize(ref, challenge, scope)
        return fresh

    def _cached(self, host: str, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get((host, scope))
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def _scope_lock(self, host: str, scope: str) -> threading.Lock:
        with self._lock:
            return self._scope_locks.setdefault((host, scope), threading.Lock())

    def _remember(self, host: str, scope: str, header: str, lifetime: float) -> str:
        with self._lock:
            self._tokens[(host, scope)] = (header, time.monotonic() + lifetime)
        return header

    def _authorize(
        self, ref: ImageReference, challenge: str, scope: str, own_scope: bool = False
    ) -> str:
        """The Authorization for `scope`; `own_scope`: the challenge came from another
        repository of this host, so its scope is not ours."""
        scheme, _, params_text = challenge.partition(" ")
        params = challenge_params(params_text)
        creds = self._credentials(ref.registry, ref.repository)
        if scheme.lower() == "basic":
            if creds is None:
                raise RegistryError(
                    f"{ref.name}: registry needs a login; run `podman login {ref.registry}`"
                )
            header = basic_authorization(creds.username, creds.password)
            return self._remember(ref.api_host, scope, header, BASIC_LIFETIME)
        if scheme.lower() != "bearer" or "realm" not in params:
            raise RegistryError(f"{ref.name}: unsupported auth challenge {challenge!r}")
        query = {"scope": scope if own_scope else params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        auth = (creds.username, creds.password) if creds else None
        response = self._token_request(params["realm"], query, auth)
        if response.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise RegistryError(
                f"{ref.name}: token service refused access ({response.status_code}); "
                f"check `podman login {ref.registry}`"
            )
        what = f"{ref.name} (token from {host_of(params['realm'])})"
        raise_for_status(response, what)
        data = json_object(response.content, f"{what}: the token response")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: the token response holds no token")
        expires_in = data.get("expires_in", 60)
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
            raise RegistryError(
                f"{what}: expires_in = {expires_in!r} in the token response; expected seconds"
            )
        return self._remember(ref.api_host, scope, f"Bearer {token}", max(expires_in - 10, 10))

    def _token_request(
        self, realm: str, query: dict[str, str], auth: tuple[str, str] | None
    ) -> requests.Response:
        try:
            return self.http.send("GET", realm, params=query, auth=auth)
        except (requests.RequestException, TransientHTTPError) as exc:
            raise RegistryError(f"token service {host_of(realm)}: {short_reason(exc)}") from exc


def basic_authorization(username: str, password: str) -> str:
    """The HTTP Basic Authorization header value (RFC 7617)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _usable_challenge(challenge: str) -> bool:
    scheme, _, params_text = challenge.partition(" ")
    if scheme.lower() == "basic":
        return True
    return scheme.lower() == "bearer" and "realm" in challenge_params(params_text)
