"""Every file and body the tool reads has a bound: special files and oversized files are refused
by name, bodies past their size or under the rate floor fail closed, registry documents of the
wrong JSON type are failures of the target they belong to, never a traceback."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from habana_tasks.build.driver_package import PackageCache
from habana_tasks.config import versions_file
from habana_tasks.config.targets import SigningFiles
from habana_tasks.core import local_files
from habana_tasks.core.errors import ConfigError, DriverPackageError, HabanaError, RegistryError
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.core.local_files import FileKind, LocalFileError
from habana_tasks.maintenance import preflight
from habana_tasks.registry import auth
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.verification import signing
from tests.fake_registry import FakeRegistry, digest
from tests.keys import make_pair
from tests.registry_proxy import send_partial

# How each kind of local file is read by the product, as a user's file reaches it.
Reader = Callable[[Path], object]


def read_auth(path: Path) -> object:
    return auth.find_credentials("r.example", "x/y", {"REGISTRY_AUTH_FILE": str(path)})


def check_netrc(path: Path) -> None:
    auth.check_credential_files({"NETRC": str(path), "REGISTRY_AUTH_FILE": "/nonexistent"})


def read_certificate(path: Path) -> object:
    return signing.load_signer(SigningFiles(path, path))


def read_key(path: Path, tmp: Path) -> object:
    # A real certificate first, so that only the key is the hostile file.
    return signing.load_signer(SigningFiles(make_pair(tmp, "real").certificate, path))


READERS: dict[str, tuple[FileKind, Reader, type[HabanaError]]] = {
    "versions file": (local_files.VERSIONS_FILE, versions_file.load, ConfigError),
    "nodes JSON": (local_files.NODES_JSON, preflight.node_kernels, ConfigError),
    "certificate": (local_files.CERTIFICATE, read_certificate, ConfigError),
    "auth file": (local_files.AUTH_FILE, read_auth, RegistryError),
    "netrc": (local_files.NETRC, check_netrc, LocalFileError),
}


def hostile(kind: str, tmp_path: Path, limit: int) -> Path:
    """A file of the given hostile kind; an oversized one is sparse (no disk used)."""
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would hang for ever
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "oversized":
        with path.open("wb") as f:
            f.truncate(limit + 1)
    elif kind == "char-device":
        return Path("/dev/zero")
    return path


@pytest.mark.reliability("local files", outcome="refused by name")
@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["fifo", "char-device", "directory", "socket", "oversized"])
def test_a_special_or_oversized_local_file_is_refused_by_name(
    reader: str, kind: str, tmp_path: Path
) -> None:
    file_kind, read, error = READERS[reader]
    path = hostile(kind, tmp_path, file_kind.limit)
    done = threading.Event()
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            read(path)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(10), f"reading a {kind} as the {reader} did not return"
    assert outcome and isinstance(outcome[0], error), outcome
    message = str(outcome[0])
    assert str(path) in message and file_kind.what in message, message
    if kind == "oversized":
        assert file_kind.bound in message, message
    else:
        assert "expected a regular file" in message, message


@pytest.mark.reliability("local files", outcome="refused by name")
def test_a_signing_key_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"signing key is a FIFO"):
        read_key(fifo, tmp_path)


def test_each_file_kind_has_a_bound() -> None:
    assert {kind.what for kind in local_files.KINDS} == {
        "versions file",
        "nodes JSON",
        "signing certificate",
        "signing key",
        "auth file",
        "netrc file",
        "run report",
        "cosign private key",
        "cosign public key",
        "cosign password file",
    }
    assert all(0 < kind.limit <= 256 * local_files.MiB for kind in local_files.KINDS)


# -- remote bodies --------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return None


@pytest.mark.reliability("package servers", outcome="failed closed")
def test_a_trickling_package_server_fails_at_the_rate_floor_not_the_deadline(
    tmp_path: Path, server: Callable[[type[BaseHTTPRequestHandler]], str]
) -> None:
    class Trickle(Quiet):
        def do_GET(self) -> None:
            send_partial(self, {"Content-Length": "100000"}, b"x" * 100_000, pause=0.05)

    base = server(Trickle)
    # 20 bytes/s arrive; the floor is 1 KiB/s over 1 s; the total bound (900 s) is not reached.
    policy = RetryPolicy(speed_limit=1024, speed_time=1.0, read_timeout=2.0)
    cache = PackageCache(tmp_path / "c", HTTPClient(policy))
    started = time.monotonic()
    with pytest.raises(DriverPackageError, match=r"less than 1024 bytes/s for 1 s"):
        cache.fetch(f"{base}/p.rpm")
    assert time.monotonic() - started < policy.speed_time + policy.read_timeout + 1
    assert not list((tmp_path / "c" / "sha256").iterdir())  # no partial file left


def test_a_fast_package_is_not_cut_by_the_rate_floor(
    tmp_path: Path, server: Callable[[type[BaseHTTPRequestHandler]], str]
) -> None:
    body = os.urandom(300_000)

    class Steady(Quiet):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 30_000):  # 30 kB every 0.1 s: above the floor
                self.wfile.write(body[start : start + 30_000])
                self.wfile.flush()
                time.sleep(0.1)

    policy = RetryPolicy(speed_limit=1024, speed_time=0.3)
    cached = PackageCache(tmp_path / "c", HTTPClient(policy)).fetch(f"{server(Steady)}/p.rpm")
    assert cached.path.read_bytes() == body


@pytest.mark.reliability("package servers", outcome="failed closed")
def test_an_api_body_past_its_bound_is_refused(
    server: Callable[[type[BaseHTTPRequestHandler]], str],
) -> None:
    class Huge(Quiet):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body ends when the connection does
            chunk = b" " * 65536
            try:
                for _ in range(200):  # 12.5 MiB, more than the 4 MiB bound
                    self.wfile.write(chunk)
            except OSError:
                return

    http = HTTPClient(RetryPolicy(attempts=1))
    with pytest.raises(HabanaError, match=r"larger than 4194304 bytes"):
        http.send("GET", f"{server(Huge)}/v2/")


@pytest.mark.reliability("local files", outcome="refused by name")
def test_a_package_file_that_is_a_fifo_or_device_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "p.rpm"
    os.mkfifo(fifo)
    cache = PackageCache(tmp_path / "c")
    with pytest.raises(DriverPackageError, match="is a FIFO; expected a regular file"):
        cache.fetch(fifo.as_uri())
    with pytest.raises(DriverPackageError, match="is a character device; expected a regular file"):
        cache.fetch("file:///dev/zero")


# -- registry documents of the wrong JSON type ----------------------------------------------


def token_answer(body: bytes) -> Callable[[str], tuple[int, dict[str, str], bytes] | None]:
    def hook(path: str) -> tuple[int, dict[str, str], bytes] | None:
        return (
            (200, {"Content-Type": "application/json"}, body) if path.startswith("/token") else None
        )

    return hook


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>busy</html>", "token response is not JSON"),
        (b"[]", "token response is not a JSON object (a list)"),
        (b'"tok"', "token response is not a JSON object (a str)"),
        (b'{"token": "tok123", "expires_in": "soon"}', "expires_in = 'soon'"),
        (b'{"token": "tok123", "expires_in": 1.5}', "expires_in = 1.5"),
        (b'{"token": "tok123", "expires_in": true}', "expires_in = True"),
        (b'{"token": ["tok123"]}', "holds no token"),
        (b"{}", "holds no token"),
    ],
)
@pytest.mark.reliability("registry faults", outcome="failed closed")
def test_a_token_answer_of_the_wrong_type_fails_the_lookup_closed(
    fake: FakeRegistry, body: bytes, message: str
) -> None:
    fake.add_image("private/x", "v1", {"a": "b"}, "application/vnd.oci.image.manifest.v1+json")
    fake.token = "tok123"
    fake.hook = token_answer(body)
    remote = RegistryClient([fake.host]).inspect(f"{fake.host}/private/x:v1")
    assert remote.existence is Existence.UNKNOWN, remote
    assert message in (remote.error or ""), remote.error
    assert fake.host in (remote.error or "")


@pytest.mark.reliability("registry faults", outcome="failed closed, others unharmed")
def test_a_repository_answering_401_without_a_challenge_fails_only_itself(
    fake: FakeRegistry,
) -> None:
    media = "application/vnd.oci.image.manifest.v1+json"
    fake.add_image("lib/good", "v1", {"a": "b"}, media)
    fake.add_image("lib/bad", "v1", {"a": "b"}, media)
    fake.hook = lambda path: (401, {}, b"") if path.startswith("/v2/lib/bad/") else None
    client = RegistryClient([fake.host])
    bad = client.inspect(f"{fake.host}/lib/bad:v1")
    good = client.inspect(f"{fake.host}/lib/good:v1")
    assert bad.existence is Existence.UNKNOWN and "unsupported auth challenge" in (bad.error or "")
    assert good.existence is Existence.PRESENT, good.error


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"<html>", "config blob is not JSON"),
        (b"[]", "config blob is not a JSON object"),
        (b'{"config": {"Labels": ["a"]}}', "not a map of strings"),
        (b'{"config": {"Labels": {"a": 1}}}', "not a map of strings"),
        (b'{"config": "labels"}', "not a map of strings"),
    ],
)
@pytest.mark.reliability("registry faults", outcome="failed closed")
def test_a_config_blob_of_the_wrong_type_is_unknown_not_present(
    fake: FakeRegistry, blob: bytes, message: str
) -> None:
    media = "application/vnd.oci.image.manifest.v1+json"
    fake.add_image("lib/x", "v1", {}, media)
    manifest = json.loads(fake.manifests["lib/x:v1"][1])
    fake.blobs[digest(blob)] = blob
    manifest["config"]["digest"] = digest(blob)
    fake.manifests["lib/x:v1"] = (media, json.dumps(manifest).encode())
    remote = RegistryClient([fake.host]).inspect(f"{fake.host}/lib/x:v1")
    assert remote.existence is Existence.UNKNOWN and message in (remote.error or ""), remote


def test_an_index_whose_platform_is_not_an_object_is_skipped_not_a_crash(
    fake: FakeRegistry,
) -> None:
    media = "application/vnd.oci.image.manifest.v1+json"
    child = fake.add_image("lib/base", "amd64", {}, media)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": media, "digest": child, "size": 1, "platform": "linux/amd64"},
        ],
    }
    body = json.dumps(index).encode()
    fake.manifests["lib/base:latest"] = ("application/vnd.oci.image.index.v1+json", body)
    with pytest.raises(RegistryError, match="has no linux/amd64 manifest"):
        RegistryClient([fake.host]).resolve(f"{fake.host}/lib/base:latest", "x86_64")


def test_a_layer_longer_than_its_descriptor_says_is_cut_at_the_declared_size(
    fake: FakeRegistry,
) -> None:
    """Reading one file out of an image (as discover does with release payloads): a layer body
    past the size its manifest declares is refused as it arrives, never read to its end."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"x" * 200_000
        info = tarfile.TarInfo("padding")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    body = layer.getvalue()
    fake.blobs[digest(body)] = body
    media = "application/vnd.oci.image.manifest.v1+json"
    fake.add_image("ocp/release", "4.90.1", {}, media)
    manifest = json.loads(fake.manifests["ocp/release:4.90.1"][1])
    manifest["layers"] = [{"mediaType": "x", "digest": digest(body), "size": 1000}]
    fake.manifests["ocp/release:4.90.1"] = (media, json.dumps(manifest).encode())
    with pytest.raises(RegistryError, match="larger than 1000 bytes"):
        RegistryClient([fake.host]).read_file(f"{fake.host}/ocp/release:4.90.1", "/x", "x86_64")
