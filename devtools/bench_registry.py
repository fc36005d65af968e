"""A registry front as clients meet real ones (ghcr.io, quay.io), for the benchmark: TLS with a CA
made for the run, a Bearer-token handshake even for anonymous pulls (401 with a challenge until a
token from its realm is presented), an optional delay per request (a registry in another region),
and a count of every request, whoever sends it. Behind it: docker-registry on plain loopback HTTP.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FORWARDED_HEADERS = (
    "Content-Type",
    "Docker-Content-Digest",
    "Location",
    "Link",
    "Docker-Distribution-Api-Version",
    "ETag",
)
SERVICE = "bench-registry"


class _Server(ThreadingHTTPServer):
    """Many clients connect at once (16 skopeo processes, each with fresh connections): a deep
    accept queue, and TLS handshakes in each connection's own thread, never in the accept loop."""

    request_queue_size = 1024
    daemon_threads = True


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA for this run and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "habana-ai-driver bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class RegistryFront:
    """TLS + Bearer tokens + delay + request counting in front of a plain-HTTP registry."""

    def __init__(self, backend: str, tls_dir: Path, delay: float = 0.0) -> None:
        self.delay = delay
        self.counts: Counter[str] = Counter()
        # What the registry was asked for, past authentication: the same reads whatever the
        # race between parallel workers for their first token.
        self.reads: Counter[str] = Counter()
        self.tokens: set[str] = set()
        lock = threading.Lock()
        local = threading.local()
        front = self
        self.ca, cert, key = make_ca(tls_dir)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real registries

            def log_message(self, *args: Any) -> None:
                return None

            def setup(self) -> None:
                self.request.do_handshake()
                super().setup()

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                kind = (
                    "token"
                    if self.path.startswith("/token")
                    else "manifest"
                    if "/manifests/" in self.path
                    else "blob"
                    if "/blobs/" in self.path
                    else "other"
                )
                with lock:
                    front.counts[kind] += 1
                if front.delay:
                    time.sleep(front.delay)
                if kind == "token":
                    token = secrets.token_urlsafe(24)
                    with lock:
                        front.tokens.add(token)
                    body = f'{{"token": "{token}", "expires_in": 300}}'.encode()
                    self._reply(200, body, {"Content-Type": "application/json"})
                    return
                presented = self.headers.get("Authorization", "")
                if not (presented.startswith("Bearer ") and presented[7:].strip() in front.tokens):
                    repo = self.path[len("/v2/") :].split("/manifests/")[0].split("/blobs/")[0]
                    scope = f',scope="repository:{repo}:pull"' if "/" in self.path[4:] else ""
                    challenge = f'Bearer realm="https://{front.host}/token",service="{SERVICE}"'
                    self._reply(
                        401,
                        b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                        {"WWW-Authenticate": challenge + scope, "Content-Type": "application/json"},
                    )
                    return
                with lock:
                    front.reads[f"{self.command} {self.path}"] += 1
                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                forwarded = {"Accept": ", ".join(self.headers.get_all("Accept") or ["*/*"])}
                for name in ("If-None-Match", "If-Modified-Since"):
                    if self.headers.get(name):
                        forwarded[name] = self.headers[name]
                response = session.request(
                    self.command,
                    f"http://{backend}{self.path}",
                    headers=forwarded,
                    allow_redirects=False,
                    timeout=30,
                )
                self._reply(
                    response.status_code,
                    response.content,
                    {n: response.headers[n] for n in FORWARDED_HEADERS if n in response.headers},
                )

            do_HEAD = do_GET

        self.server = _Server(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def reset(self) -> None:
        self.counts.clear()
        self.reads.clear()

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
