"""OCI distribution API client: digests verified, tri-state existence, bounded retries, token auth.
Lookups go through the HTTP API, never podman or skopeo: one run asks each question once, at once.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import requests

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.archive import relative_name
from habana_tasks.core.errors import (
    DigestMismatchError,
    Failure,
    ManifestUnknown,
    RegistryError,
    TransientHTTPError,
)
from habana_tasks.core.http_client import BodyReader, HTTPClient, host_of, short_reason
from habana_tasks.registry.auth import Credentials, TokenFlow, find_credentials
from habana_tasks.registry.layers import scan_layer
from habana_tasks.registry.manifests import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    Manifest,
    manifest_problem,
    media_type_of,
    select_platform,
    sha256_digest,
)
from habana_tasks.registry.responses import (
    error_codes,
    json_object,
    next_link,
    raise_for_status,
    says_absent,
    upload_location,
)

MAX_PAGES = 1000
STEP = "registry state"  # the step a failed inspection is recorded under
Settled = dict[str, bytes | None]  # a path read from layers: its content, or None if deleted
Held = dict[str, bytes]  # the paths an image holds, and their contents
Enough = Callable[[Held], bool] | None  # whether the paths held so far suffice


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
    failure: Failure | None = None  # why the state is UNKNOWN

    @property
    def error(self) -> str | None:
        return self.failure.why if self.failure else None


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
        self.auth = TokenFlow(self.http, credentials)

    @property
    def requests_sent(self) -> int:
        return self.http.requests_sent

    # -- public questions ---------------------------------------------------------------------

    def get_manifest(self, ref: ImageReference) -> Manifest:
        url = f"{self._base(ref)}/manifests/{ref.reference}"
        response = self._request("GET", url, ref, headers={"Accept": MANIFEST_ACCEPT})
        if says_absent(response):
            raise ManifestUnknown(f"{ref}: not found ({', '.join(sorted(error_codes(response)))})")
        raise_for_status(response, f"{ref}")
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
        raise_for_status(response, f"{ref.name}@{digest} (blob)")
        if sha256_digest(response.content) != digest:
            raise DigestMismatchError(f"{ref.name}: blob {digest} does not hash to its digest")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{threading.get_ident()}")
            partial.write_bytes(response.content)
            partial.replace(cached)
        return response.content

    def inspect(self, image: str, labels_key: str | None = None) -> RemoteImage:
        """Tri-state: PRESENT with labels, ABSENT only on an authenticated 404, else UNKNOWN.
        When the manifest's annotations hold `labels_key`, they are the image's labels (the
        builder writes the same map to both) and the config blob is not read."""
        ref = ImageReference.parse(image)
        try:
            manifest = self.get_manifest(ref)
            data = manifest.json()
            annotations = (
                data.get("annotations") if manifest.media_type not in INDEX_TYPES else None
            )
            if isinstance(annotations, dict) and labels_key and labels_key in annotations:
                found: object = annotations
                where = "the manifest's annotations"
            else:
                settings = self.image_config(manifest).get("config") or {}
                found = (settings.get("Labels") or {}) if isinstance(settings, dict) else None
                where = "config.Labels in its config blob"
        except ManifestUnknown:
            return RemoteImage(image, Existence.ABSENT)
        except RegistryError as exc:
            return RemoteImage(image, Existence.UNKNOWN, failure=Failure.of(STEP, exc, image))
        if not isinstance(found, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in found.items()
        ):
            why = f"{image}: {where} is not a map of strings"
            return RemoteImage(image, Existence.UNKNOWN, failure=Failure(STEP, why, image))
        # The manifest was validated: every layer is a descriptor with an integer size.
        size = sum(layer["size"] for layer in data["layers"])
        return RemoteImage(image, Existence.PRESENT, manifest.digest, dict(found), size)

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
            if says_absent(response):
                return []
            raise_for_status(response, f"{repository} (tags)")
            page = json_object(response.content, f"{repository} (tags): the tag list").get("tags")
            page = [] if page is None else page
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{repository} (tags): 'tags' is not a list of strings")
            tags.extend(page)
            url = next_link(response, origin)
            if url is not None and not url.startswith(origin + "/"):
                raise RegistryError(
                    f"{repository} (tags): the next page is on another host "
                    f"({host_of(url)}); refused, credentials stay with {ref.api_host}"
                )
        return tags

    def read_file(self, image: str, path: str, arch: str) -> bytes | None:
        """One file from an image without pulling it (see read_first)."""
        return self.read_each(image, (path,), arch).get(path)

    def read_first(self, image: str, paths: Sequence[str], arch: str) -> tuple[str, bytes] | None:
        """The first of `paths` the image holds, and its content, without pulling the image:
        layers are read newest first, each streamed once as tar for every path and verified
        against its digest. None when no layer has any of them."""
        wanted = [relative_name(path) for path in paths]
        settled: Settled = {}
        for settled in self._settle(image, wanted, arch):
            # The first path held decides, unless a preferred one is unsettled (older layers).
            for i, path in enumerate(wanted):
                if path not in settled:
                    break
                if (content := settled[path]) is not None:
                    return paths[i], content
            else:
                return None
        held = [(paths[i], c) for i, p in enumerate(wanted) if (c := settled.get(p)) is not None]
        return held[0] if held else None

    def read_each(self, image: str, paths: Sequence[str], arch: str, enough: Enough = None) -> Held:
        """Each of `paths` the image holds, with its content, from one pass over its layers
        (stopped once every path is settled, or once `enough` says what is held suffices)."""
        pairs = [(path, relative_name(path)) for path in paths]
        held: Held = {}
        for settled in self._settle(image, [p for _, p in pairs], arch):
            held = {g: c for g, p in pairs if (c := settled.get(p)) is not None}
            if len(settled) == len({p for _, p in pairs}) or (enough and enough(held)):
                break
        return held

    def _settle(self, image: str, wanted: Sequence[str], arch: str) -> Iterator[Settled]:
        """After each layer, newest first: what the newest layer naming each path says of it
        (its content; None when that layer deletes it)."""
        ref = ImageReference.parse(image)
        manifest = self.get_manifest(ref)
        if manifest.media_type in INDEX_TYPES:
            child = select_platform(manifest.json(), arch, str(ref))
            manifest = self.get_manifest(ref.with_digest(child))
        settled: Settled = {}
        for layer in reversed(manifest.json().get("layers", [])):
            digest, declared = layer["digest"], layer["size"]
            response = self._request("GET", f"{self._base(ref)}/blobs/{digest}", ref, stream=True)
            with response:
                what = f"{ref.name}@{digest} (layer)"
                raise_for_status(response, what)
                body = BodyReader(
                    response,
                    self.http.retry,
                    deadline=time.monotonic() + self.http.retry.download_deadline,
                    limit=declared,
                    what=what,
                )
                open_paths = [path for path in wanted if path not in settled]
                for path, match in scan_layer(body, digest, what, open_paths).items():
                    settled[path] = match.content
            yield settled

    def put_blob(self, ref: ImageReference, body: bytes) -> str:
        """Upload a small blob (one POST, one PUT) unless the repository has it; its digest."""
        digest = sha256_digest(body)
        url = f"{self._base(ref)}/blobs/{digest}"
        if self._request("HEAD", url, ref, scope_action="pull,push").status_code == HTTPStatus.OK:
            return digest
        what = f"{ref.name}@{digest} (upload)"
        started = self._request(
            "POST", f"{self._base(ref)}/blobs/uploads/", ref, scope_action="pull,push"
        )
        raise_for_status(started, what)
        location = upload_location(started, self._scheme(ref.api_host) + "://" + ref.api_host, what)
        joiner = "&" if "?" in location else "?"
        finished = self._request(
            "PUT",
            f"{location}{joiner}digest={digest}",
            ref,
            headers={"Content-Type": "application/octet-stream"},
            scope_action="pull,push",
            data=body,
        )
        raise_for_status(finished, what)
        return digest

    def put_manifest(self, ref: ImageReference, body: bytes, media_type: str) -> str:
        """Store a manifest under ref's tag; its digest, checked against the registry's."""
        digest = sha256_digest(body)
        url = f"{self._base(ref)}/manifests/{ref.reference}"
        response = self._request(
            "PUT",
            url,
            ref,
            headers={"Content-Type": media_type},
            scope_action="pull,push",
            data=body,
        )
        raise_for_status(response, f"{ref} (push)")
        header = response.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise DigestMismatchError(f"{ref}: registry stored {header}, the manifest is {digest}")
        return digest

    def delete_manifest(self, ref: ImageReference, digest: str) -> None:
        url = f"{self._base(ref)}/manifests/{digest}"
        response = self._request("DELETE", url, ref, scope_action="delete")
        raise_for_status(response, f"{ref.name}@{digest} (delete)")

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
        data: bytes | None = None,
    ) -> requests.Response:
        headers = dict(headers or {})
        scope = f"repository:{ref.repository}:{scope_action}"
        token = self.auth.known(ref, scope)
        if token:
            headers["Authorization"] = token
        response = self._send(method, url, headers, stream, data)
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            response.close()
            challenge = response.headers.get("WWW-Authenticate", "")
            headers["Authorization"] = self.auth.answer(
                ref, scope, challenge, headers.get("Authorization")
            )
            response = self._send(method, url, headers, stream, data)
            if response.status_code == HTTPStatus.UNAUTHORIZED:
                raise RegistryError(
                    f"{ref.name}: authentication refused (401); check `podman login {ref.registry}`"
                )
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        stream: bool = False,
        data: bytes | None = None,
    ) -> requests.Response:
        try:
            return self.http.send(method, url, headers=headers, stream=stream, data=data)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(f"{method} {host_of(url)}: TLS error: {short_reason(exc)}") from exc
        except TransientHTTPError as exc:
            raise RegistryError(str(exc)) from exc
