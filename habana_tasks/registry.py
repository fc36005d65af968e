"""OCI distribution API client: digests verified, tri-state existence, bounded retries, token auth.

Lookups go through the HTTP API, never through podman or skopeo, so that one run asks each
question once and concurrently.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, cast

import requests

from habana_tasks.auth import Credentials, find_credentials
from habana_tasks.errors import (
    BodyError,
    DigestMismatchError,
    ManifestUnknown,
    RegistryError,
    TransientHTTPError,
)
from habana_tasks.http_client import (
    BODY_ERRORS,
    BodyReader,
    HTTPClient,
    host_of,
    short_reason,
)
from habana_tasks.image_reference import ImageReference
from habana_tasks.manifests import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    Manifest,
    manifest_problem,
    media_type_of,
    select_platform,
    sha256_digest,
)

ABSENT_CODES = frozenset(("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))
MAX_PAGES = 1000


@dataclass(frozen=True)
class ResolvedImage:
    """An image reference pinned to the manifest of one platform (what a FROM line uses)."""

    requested: str
    name: str
    digest: str
    index_digest: str | None

    @property
    def pinned(self) -> str:
        return f"{self.name}@{self.digest}"


class Existence(enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RemoteImage:
    """What the repository holds under a tag. UNKNOWN carries the error and never means absent."""

    reference: str
    existence: Existence
    digest: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    error: str | None = None


_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """Thread-safe; tokens cached per registry and scope."""

    def __init__(
        self,
        insecure_registries: Iterable[str] = (),
        http: HTTPClient | None = None,
        credentials: Callable[[str, str], Credentials | None] = find_credentials,
        blob_cache: Path | None = None,
    ) -> None:
        self.insecure = frozenset(insecure_registries)
        self.http = http or HTTPClient()
        # Blobs are immutable by digest: a config read once (labels) is never asked for again.
        self.blob_cache = blob_cache
        self._credentials = credentials
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        # host -> its last auth challenge: later scopes get their token before asking, and
        # parallel requests for one scope wait for a single token request (one per scope).
        self._challenges: dict[str, str] = {}
        self._scope_locks: dict[tuple[str, str], threading.Lock] = {}

    @property
    def requests_sent(self) -> int:
        return self.http.requests_sent

    # -- public questions ---------------------------------------------------------------------

    def get_manifest(self, ref: ImageReference) -> Manifest:
        url = f"{self._base(ref)}/manifests/{ref.reference}"
        response = self._request("GET", url, ref, headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == HTTPStatus.NOT_FOUND and _error_codes(response) & ABSENT_CODES:
            raise ManifestUnknown(f"{ref}: not found ({', '.join(sorted(_error_codes(response)))})")
        _raise_for_status(response, f"{ref}")
        body = response.content
        digest = sha256_digest(body)
        header = response.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise DigestMismatchError(
                f"{ref}: registry says digest {header} but the manifest body hashes to {digest}"
            )
        if ref.digest and ref.digest != digest:
            raise DigestMismatchError(f"{ref}: manifest body hashes to {digest}, not {ref.digest}")
        try:
            data = json.loads(body)
        except ValueError:
            raise RegistryError(
                f"{ref}: the manifest {ref.registry} served is not JSON ({len(body)} bytes)"
            ) from None
        media_type = media_type_of(data, response.headers.get("Content-Type", ""))
        if why := manifest_problem(data, media_type):
            raise RegistryError(f"{ref}: {ref.registry} served a malformed manifest: {why}")
        return Manifest(ref, digest, media_type, body)

    def resolve(self, image: str, arch: str) -> ResolvedImage:
        """Pin an image to its linux/<arch> manifest digest (an index's child, if an index)."""
        ref = ImageReference.parse(image)
        manifest = self.get_manifest(ref)
        index_digest = None
        if manifest.media_type in INDEX_TYPES:
            index_digest = manifest.digest
            child = select_platform(manifest.json(), arch, str(ref))
            manifest = self.get_manifest(ref.with_digest(child))
        return ResolvedImage(image, ref.name, manifest.digest, index_digest)

    def image_config(self, manifest: Manifest) -> dict[str, Any]:
        """The image's config blob (labels, created, architecture), verified against its digest."""
        data = manifest.json()
        if manifest.media_type in INDEX_TYPES:
            raise RegistryError(f"{manifest.reference}: is an index, expected an image manifest")
        config = data.get("config", {})
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str):
            raise RegistryError(f"{manifest.reference}: manifest has no config digest")
        blob = self.get_blob(manifest.reference, digest)
        return json_object(blob, f"{manifest.reference}: config blob")

    def get_blob(self, ref: ImageReference, digest: str) -> bytes:
        cached = self.blob_cache / digest.replace(":", "-") if self.blob_cache else None
        if cached is not None and cached.is_file():
            body = cached.read_bytes()
            if sha256_digest(body) == digest:
                return body
        url = f"{self._base(ref)}/blobs/{digest}"
        response = self._request("GET", url, ref)
        _raise_for_status(response, f"{ref.name}@{digest} (blob)")
        if sha256_digest(response.content) != digest:
            raise DigestMismatchError(f"{ref.name}: blob {digest} does not hash to its digest")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{threading.get_ident()}")
            partial.write_bytes(response.content)
            partial.replace(cached)
        return response.content

    def inspect(self, image: str) -> RemoteImage:
        """Tri-state: PRESENT with labels, ABSENT only on an authenticated 404, else UNKNOWN."""
        ref = ImageReference.parse(image)
        try:
            manifest = self.get_manifest(ref)
            config = self.image_config(manifest)
        except ManifestUnknown:
            return RemoteImage(image, Existence.ABSENT)
        except RegistryError as exc:
            return RemoteImage(image, Existence.UNKNOWN, error=str(exc))
        settings = config.get("config") or {}  # absent or null: an image without labels
        labels = (settings.get("Labels") or {}) if isinstance(settings, dict) else None
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            why = f"{image}: config.Labels in its config blob is not a map of strings"
            return RemoteImage(image, Existence.UNKNOWN, error=why)
        # The manifest was validated: every layer is a descriptor with an integer size.
        size = sum(layer["size"] for layer in manifest.json()["layers"])
        return RemoteImage(image, Existence.PRESENT, manifest.digest, labels, size)

    def list_tags(self, repository: str) -> list[str]:
        """All tags of a repository, following Link pagination on the registry's own host only
        (credentials never go elsewhere), never the same page twice, at most MAX_PAGES pages."""
        ref = ImageReference.parse(repository)
        origin = self._scheme(ref.api_host) + "://" + ref.api_host
        url: str | None = f"{self._base(ref)}/tags/list?n=1000"
        tags: list[str] = []
        seen: set[str] = set()
        while url:
            if url in seen:
                raise RegistryError(f"{repository} (tags): pagination loops back to {url}")
            if len(seen) >= MAX_PAGES:
                raise RegistryError(f"{repository} (tags): more than {MAX_PAGES} pages")
            seen.add(url)
            response = self._request("GET", url, ref)
            if (
                response.status_code == HTTPStatus.NOT_FOUND
                and _error_codes(response) & ABSENT_CODES
            ):
                return []
            _raise_for_status(response, f"{repository} (tags)")
            page = json_object(response.content, f"{repository} (tags): the tag list").get("tags")
            page = [] if page is None else page
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{repository} (tags): 'tags' is not a list of strings")
            tags.extend(page)
            url = _next_link(response, origin)
            if url is not None and not url.startswith(origin + "/"):
                raise RegistryError(
                    f"{repository} (tags): the next page is on another host "
                    f"({host_of(url)}); refused, credentials stay with {ref.api_host}"
                )
        return tags

    def read_file(self, image: str, path: str, arch: str) -> bytes | None:
        """One file from an image without pulling it: layers are read newest first, streamed as
        tar, and each layer read is verified against its digest. None when no layer has it."""
        ref = ImageReference.parse(image)
        manifest = self.get_manifest(ref)
        if manifest.media_type in INDEX_TYPES:
            child = select_platform(manifest.json(), arch, str(ref))
            manifest = self.get_manifest(ref.with_digest(child))
        wanted = path.lstrip("/")
        whiteout = wanted.rsplit("/", 1)
        whiteout_name = "/".join([*whiteout[:-1], ".wh." + whiteout[-1]])
        for layer in reversed(manifest.json().get("layers", [])):
            digest, declared = layer["digest"], layer["size"]
            response = self._request("GET", f"{self._base(ref)}/blobs/{digest}", ref, stream=True)
            with response:
                what = f"{ref.name}@{digest} (layer)"
                _raise_for_status(response, what)
                body = BodyReader(
                    response,
                    self.http.retry,
                    deadline=time.monotonic() + self.http.retry.download_deadline,
                    limit=declared,
                    what=what,
                )
                reader = _HashingReader(body)
                found: bytes | None = None
                deleted = False
                try:
                    with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|*") as tar:
                        for member in tar:
                            name = member.name.lstrip("./")
                            if name == wanted and member.isfile():
                                handle = tar.extractfile(member)
                                found = handle.read() if handle else None
                            elif name == whiteout_name:
                                deleted = True
                except tarfile.TarError as exc:
                    raise RegistryError(
                        f"{ref.name}@{digest}: layer is not a readable tar ({exc})"
                    ) from exc
                reader.drain()
                if reader.digest != digest:
                    raise DigestMismatchError(
                        f"{ref.name}: layer {digest} does not hash to its digest"
                    )
            if found is not None:
                return found
            if deleted:
                return None
        return None

    def delete_manifest(self, ref: ImageReference, digest: str) -> None:
        url = f"{self._base(ref)}/manifests/{digest}"
        response = self._request("DELETE", url, ref, scope_action="delete")
        _raise_for_status(response, f"{ref.name}@{digest} (delete)")

    # -- transport ---------------------------------------------------------------------------

    def _scheme(self, host: str) -> str:
        return "http" if host in self.insecure else "https"

    def _base(self, ref: ImageReference) -> str:
        return f"{self._scheme(ref.api_host)}://{ref.api_host}/v2/{ref.repository}"

    def _request(
        self,
        method: str,
        url: str,
        ref: ImageReference,
        headers: dict[str, str] | None = None,
        scope_action: str = "pull",
        stream: bool = False,
    ) -> requests.Response:
        headers = dict(headers or {})
        scope = f"repository:{ref.repository}:{scope_action}"
        token = self._cached_token(ref.api_host, scope)
        known = self._challenges.get(ref.api_host)
        if token is None and known is not None:
            with self._scope_lock(ref.api_host, scope):
                token = self._cached_token(ref.api_host, scope) or self._authorize(
                    ref, known, scope, own_scope=True
                )
        if token:
            headers["Authorization"] = token
        response = self._send(method, url, headers, stream)
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            response.close()
            challenge = response.headers.get("WWW-Authenticate", "")
            with self._scope_lock(ref.api_host, scope):
                # Only a usable challenge is shared with the host's other repositories: one
                # repository's odd answer must not fail the lookups of the healthy ones.
                if _usable_challenge(challenge):
                    self._challenges[ref.api_host] = challenge
                fresh = self._cached_token(ref.api_host, scope)
                if fresh is None or fresh == headers.get("Authorization"):
                    fresh = self._authorize(ref, challenge, scope)
            headers["Authorization"] = fresh
            response = self._send(method, url, headers, stream)
            if response.status_code == HTTPStatus.UNAUTHORIZED:
                raise RegistryError(
                    f"{ref.name}: authentication refused (401); check `podman login {ref.registry}`"
                )
        return response

    def _send(
        self, method: str, url: str, headers: dict[str, str], stream: bool = False
    ) -> requests.Response:
        try:
            return self.http.send(method, url, headers=headers, stream=stream)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(f"{method} {host_of(url)}: TLS error: {short_reason(exc)}") from exc
        except TransientHTTPError as exc:
            raise RegistryError(str(exc)) from exc

    def _cached_token(self, host: str, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get((host, scope))
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def _scope_lock(self, host: str, scope: str) -> threading.Lock:
        with self._lock:
            return self._scope_locks.setdefault((host, scope), threading.Lock())

    def _authorize(
        self, ref: ImageReference, challenge: str, scope: str, own_scope: bool = False
    ) -> str:
        """The Authorization for `scope`; `own_scope`: the challenge came from another
        repository of this host, so its scope is not ours."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_RE.findall(params_text))
        creds = self._credentials(ref.registry, ref.repository)
        if scheme.lower() == "basic":
            if creds is None:
                raise RegistryError(
                    f"{ref.name}: registry needs a login; run `podman login {ref.registry}`"
                )
            header = basic_authorization(creds.username, creds.password)
            with self._lock:
                self._tokens[(ref.api_host, scope)] = (header, time.monotonic() + 3600)
            return header
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
        _raise_for_status(response, what)
        data = json_object(response.content, f"{what}: the token response")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: the token response holds no token")
        expires_in = data.get("expires_in", 60)
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
            raise RegistryError(
                f"{what}: expires_in = {expires_in!r} in the token response; expected seconds"
            )
        lifetime = max(expires_in - 10, 10)
        header = f"Bearer {token}"
        with self._lock:
            self._tokens[(ref.api_host, scope)] = (header, time.monotonic() + lifetime)
        return header

    def _token_request(
        self, realm: str, query: dict[str, str], auth: tuple[str, str] | None
    ) -> requests.Response:
        try:
            return self.http.send("GET", realm, params=query, auth=auth)
        except (requests.RequestException, TransientHTTPError) as exc:
            raise RegistryError(f"token service {host_of(realm)}: {short_reason(exc)}") from exc


class _HashingReader:
    """A file-like view of a layer's body, within the bounds of BodyReader (the layer's own
    declared size among them), that hashes everything read through it."""

    def __init__(self, body: BodyReader) -> None:
        self.body = body
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.body.read1(size if size > 0 else 1 << 20)
        except BodyError as exc:
            raise RegistryError(str(exc)) from exc
        except BODY_ERRORS as exc:
            raise RegistryError(
                f"{self.body.what}: the layer was cut off ({short_reason(exc)})"
            ) from exc
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def basic_authorization(username: str, password: str) -> str:
    """The HTTP Basic Authorization header value (RFC 7617)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _usable_challenge(challenge: str) -> bool:
    scheme, _, params_text = challenge.partition(" ")
    if scheme.lower() == "basic":
        return True
    return scheme.lower() == "bearer" and "realm" in dict(_CHALLENGE_RE.findall(params_text))


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A registry document parsed and checked to be a JSON object, else a RegistryError."""
    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} is not JSON ({len(body)} bytes)") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object (a {type(data).__name__})")
    return data


def _error_codes(response: requests.Response) -> set[str]:
    """The codes of an OCI error body; none when the body is not of that shape."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return set()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)}


def _raise_for_status(response: requests.Response, what: str) -> None:
    if response.status_code < HTTPStatus.BAD_REQUEST:
        return
    codes = ", ".join(sorted(_error_codes(response))) or response.reason
    raise RegistryError(f"{what}: HTTP {response.status_code} ({codes})")


def _next_link(response: requests.Response, base: str) -> str | None:
    link = response.headers.get("Link", "")
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    if not m:
        return None
    target = m.group(1)
    return target if "://" in target else base + target
