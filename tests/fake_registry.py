"""A scriptable registry speaking the distribution API over HTTP on 127.0.0.1 (unit tests only).

Its real counterpart is Debian's docker-registry in tests/integration.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Response = tuple[int, dict[str, str], bytes]


def _empty_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w"):
        pass
    return out.getvalue()


EMPTY_LAYER = _empty_tar()


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass
class FakeRegistry:
    manifests: dict[str, tuple[str, bytes]] = field(
        default_factory=dict
    )  # "repo:ref" -> (type, body)
    blobs: dict[str, bytes] = field(default_factory=dict)
    token: str | None = None  # when set, every /v2 request needs "Bearer <token>"
    require_basic: tuple[str, str] | None = None  # token endpoint needs these credentials
    script: list[Response] = field(default_factory=list)  # answered first, in order
    send_digest_header: bool = True
    tamper_digest: bool = False
    hook: Callable[[str], Response | None] | None = None
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    host: str = ""  # "127.0.0.1:<port>" once started

    def start(self) -> str:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                registry.log.append((self.command, self.path, dict(self.headers)))
                self._send(*registry.answer(self.path, dict(self.headers), self.server))

            do_HEAD = do_GET

            def do_DELETE(self) -> None:
                registry.log.append((self.command, self.path, dict(self.headers)))
                self._send(*(registry.answer(self.path, dict(self.headers), self.server, "DELETE")))

            def do_POST(self) -> None:
                self.do_PUT()

            def do_PUT(self) -> None:
                registry.log.append((self.command, self.path, dict(self.headers)))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = registry.answer(self.path, dict(self.headers), self.server, self.command)
                if answer[0] == 0:  # not scripted, hooked or refused: a write to carry out
                    answer = registry.write(self.command, self.path, dict(self.headers), body)
                self._send(*answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()

    def add_image(
        self,
        repo: str,
        tag: str,
        labels: dict[str, str],
        media_type: str,
        annotations: object = None,
    ) -> str:
        body = self.image_manifest(labels, media_type, annotations)
        self.manifests[f"{repo}:{tag}"] = (media_type, body)
        self.manifests[f"{repo}:{digest(body)}"] = (media_type, body)
        return digest(body)

    def image_manifest(
        self, labels: dict[str, str], media_type: str, annotations: object = None
    ) -> bytes:
        """An image's manifest (its config blob stored): what a push would upload."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels}})
        config_bytes = config.encode()
        self.blobs[digest(config_bytes)] = config_bytes
        # One layer that is an empty tar, as a real registry would serve it: a reader of its
        # files (the kernel's module index) finds none.
        self.blobs[digest(EMPTY_LAYER)] = EMPTY_LAYER
        manifest = {
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": digest(config_bytes), "size": len(config_bytes)},
            "layers": [{"mediaType": "x", "digest": digest(EMPTY_LAYER), "size": len(EMPTY_LAYER)}],
        }
        if media_type.startswith("application/vnd.docker"):
            manifest["mediaType"] = media_type
        if annotations is not None:
            manifest["annotations"] = annotations
        return json.dumps(manifest).encode()

    def add_index(self, repo: str, tag: str, children: dict[str, str]) -> str:
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": a},
                }
                for a, d in children.items()
            ],
        }
        body = json.dumps(index).encode()
        self.manifests[f"{repo}:{tag}"] = ("application/vnd.oci.image.index.v1+json", body)
        return digest(body)

    def tags(self, repo: str) -> list[str]:
        return sorted(
            key.split(":", 1)[1]
            for key in self.manifests
            if key.split(":", 1)[0] == repo and not key.split(":", 1)[1].startswith("sha256:")
        )

    def write(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        """Uploads as the distribution API takes them: POST starts a blob upload, PUT with
        ?digest= ends it, PUT on a manifest stores it under its tag and its digest."""
        bare, _, query = path.partition("?")
        repo = _repo_of(bare)
        if method == "POST" and bare.endswith("/blobs/uploads/"):
            return 202, {"Location": f"/v2/{repo}/blobs/uploads/u{len(self.log)}?_state=x"}, b""
        if method == "PUT" and "/blobs/uploads/" in bare:
            wanted = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("digest")
            if wanted != digest(body):
                return 400, {}, b'{"errors":[{"code":"DIGEST_INVALID"}]}'
            self.blobs[wanted] = body
            return 201, {"Docker-Content-Digest": wanted}, b""
        if method == "PUT" and "/manifests/" in bare:
            media_type = headers.get("Content-Type", "")
            self.manifests[f"{repo}:{bare.rsplit('/', 1)[1]}"] = (media_type, body)
            self.manifests[f"{repo}:{digest(body)}"] = (media_type, body)
            return 201, {"Docker-Content-Digest": digest(body)}, b""
        return 405, {}, b'{"errors":[{"code":"UNSUPPORTED"}]}'

    def answer(
        self, path: str, headers: dict[str, str], server: Any, method: str = "GET"
    ) -> Response:
        if self.script:
            return self.script.pop(0)
        if self.hook and (hooked := self.hook(path)):
            return hooked
        if path.startswith("/token"):
            if self.require_basic:
                expected = base64.b64encode(":".join(self.require_basic).encode()).decode()
                if headers.get("Authorization") != f"Basic {expected}":
                    return 401, {}, b'{"details":"bad credentials"}'
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"token": self.token, "expires_in": 300}).encode(),
            )
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            port = server.server_address[1]
            challenge = (
                f'Bearer realm="http://127.0.0.1:{port}/token",service="fake",'
                f'scope="repository:{_repo_of(path)}:pull"'
            )
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        if method in ("POST", "PUT"):
            return 0, {}, b""
        parts = path.split("?", 1)[0].split("/")
        if method == "DELETE" and "/manifests/" in path:
            repo = "/".join(parts[2 : parts.index("manifests")])
            gone = [
                k
                for k, (_, body) in self.manifests.items()
                if k.startswith(f"{repo}:") and digest(body) == parts[-1]
            ]
            for key in gone:
                del self.manifests[key]
            return (
                (202, {}, b"") if gone else (404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            )
        if parts[-2:] == ["tags", "list"]:
            repo = "/".join(parts[2:-2])
            tags = self.tags(repo)
            if not tags:
                return 404, {}, b'{"errors":[{"code":"NAME_UNKNOWN"}]}'
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"name": repo, "tags": tags}).encode(),
            )
        if "/manifests/" in path:
            repo = "/".join(parts[2 : parts.index("manifests")])
            ref = parts[-1]
            if f"{repo}:{ref}" not in self.manifests:
                return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
            media_type, body = self.manifests[f"{repo}:{ref}"]
            accept = headers.get("Accept", "")
            if media_type not in accept:
                return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not accepted"}]}'
            out = {"Content-Type": media_type}
            if self.send_digest_header:
                out["Docker-Content-Digest"] = (
                    "sha256:" + "f" * 64 if self.tamper_digest else digest(body)
                )
            return 200, out, body
        if "/blobs/" in path:
            blob = self.blobs.get(parts[-1])
            if blob is None:
                return 404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
            return 200, {}, blob
        return 404, {}, b""


def _repo_of(path: str) -> str:
    parts = path.split("?", maxsplit=1)[0].split("/")[2:]
    for marker in ("manifests", "blobs", "tags"):
        if marker in parts:
            return "/".join(parts[: parts.index(marker)])
    return "/".join(parts)
