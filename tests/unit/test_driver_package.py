"""Package downloads from real HTTP servers that misbehave; the RPM contents themselves are
tested in tests/integration/test_driver_packages.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from habana_tasks.build.driver_package import (
    BuildExclusive,
    PackageCache,
    parse_build_exclusive,
    parse_git_sha,
)
from habana_tasks.core.errors import DriverPackageError
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from tests.conftest import RecordProperty
from tests.registry_proxy import send_partial

pytestmark = pytest.mark.reliability("package servers")


@pytest.mark.reliability("package servers", outcome="read")
def test_quoted_sha_is_accepted() -> None:
    assert parse_git_sha('KMD_LAST_GIT_SHA="abcdef1"\n', "x") == "abcdef1"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "www"
    directory.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", directory
    server.shutdown()


@pytest.mark.reliability("package servers", outcome="survived")
def test_download_once_then_from_cache(served: tuple[str, Path], tmp_path: Path) -> None:
    url, directory = served
    (directory / "p.rpm").write_bytes(b"x" * 5000)
    cache = PackageCache(tmp_path / "cache")
    first = cache.fetch(f"{url}/p.rpm")
    second = cache.fetch(f"{url}/p.rpm")
    assert cache.downloads == 1
    assert first == second and first.size == 5000
    assert first.path == tmp_path / "cache" / "sha256" / first.sha256
    # A damaged cache entry is noticed and fetched again.
    first.path.write_bytes(b"y" * 5000)
    again = cache.fetch(f"{url}/p.rpm")
    assert cache.downloads == 2 and again.path.read_bytes() == b"x" * 5000


@pytest.mark.reliability("package servers", outcome="failed closed")
def test_http_error_names_the_url_without_credentials(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    with_creds = url.replace("http://", "http://user:hunter2@") + "/missing.rpm?token=abc"
    with pytest.raises(DriverPackageError) as info:
        PackageCache(tmp_path / "c").fetch(with_creds)
    assert str(info.value) == f"{url}/missing.rpm: HTTP 404 (File not found)"
    assert not list((tmp_path / "c" / "sha256").iterdir())


@pytest.mark.reliability("package servers", outcome="failed closed")
def test_truncated_download_is_refused(tmp_path: Path) -> None:
    class Short(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            send_partial(self, {"Content-Length": "1000"}, b"z" * 10)
            self.close_connection = True

        def log_message(self, *a: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        cache = PackageCache(tmp_path / "c")
        with pytest.raises(DriverPackageError):
            cache.fetch(f"http://127.0.0.1:{server.server_address[1]}/p.rpm")
        assert cache.downloads == 0
        assert not [p for p in (tmp_path / "c" / "sha256").iterdir()]
    finally:
        server.shutdown()


@pytest.mark.reliability("package servers", outcome="noticed")
def test_a_package_republished_under_the_same_url_is_noticed_next_run(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, directory = served
    package = directory / "p.rpm"
    package.write_bytes(b"first" * 1000)
    first = PackageCache(tmp_path / "cache").fetch(f"{url}/p.rpm")
    # Next run, nothing changed: one conditional request, answered 304, no download.
    unchanged = PackageCache(tmp_path / "cache")
    assert unchanged.fetch(f"{url}/p.rpm") == first
    assert unchanged.fetch(f"{url}/p.rpm") == first  # asked once per run, not per use
    assert (unchanged.downloads, unchanged.revalidations) == (0, 1)
    # The vendor re-publishes under the same URL: the next run downloads the new content.
    package.write_bytes(b"second" * 1000)
    stamp = package.stat().st_mtime + 10
    os.utime(package, (stamp, stamp))
    changed = PackageCache(tmp_path / "cache")
    again = changed.fetch(f"{url}/p.rpm")
    assert (changed.downloads, changed.revalidations) == (1, 1)
    assert again.sha256 != first.sha256 and again.path.read_bytes() == b"second" * 1000


@pytest.mark.reliability("package servers", outcome="noticed")
def test_a_changed_file_url_is_noticed_and_stale_partials_are_removed(tmp_path: Path) -> None:
    package = tmp_path / "p.rpm"
    package.write_bytes(b"one")
    cache_root = tmp_path / "cache"
    first = PackageCache(cache_root).fetch(package.as_uri())
    stale = cache_root / "sha256" / ".partial-left-by-a-killed-run"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    package.write_bytes(b"two!")
    again = PackageCache(cache_root).fetch(package.as_uri())
    assert again.sha256 != first.sha256 and again.size == 4
    assert not stale.exists()


@pytest.mark.reliability("package servers", outcome="failed closed")
def test_a_trickling_server_is_cut_off_at_the_deadline(
    tmp_path: Path, record_property: RecordProperty
) -> None:
    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            send_partial(self, {"Content-Length": "100000"}, b"x" * 100_000, pause=0.05)

        def log_message(self, *a: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        policy = RetryPolicy(download_deadline=1.5, read_timeout=1.0)
        cache = PackageCache(tmp_path / "c", HTTPClient(policy))
        started = time.monotonic()
        with pytest.raises(DriverPackageError, match=r"did not arrive in time \(bound: 1.5 s\)"):
            cache.fetch(f"http://127.0.0.1:{server.server_address[1]}/p.rpm")
        seconds = time.monotonic() - started
        assert seconds < 1.5 + 1.0 + 1
        record_property("seconds", seconds)
        assert not list((tmp_path / "c" / "sha256").iterdir())
    finally:
        server.shutdown()


@pytest.mark.reliability("package servers", outcome="kept to its host")
def test_netrc_credentials_go_to_the_package_server_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login vendor password s3cret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        http = HTTPClient()
        PackageCache(tmp_path / "c", http).fetch(f"{base}/p.rpm")
        http.send("GET", f"{base}/v2/")  # what the registry client sends: no netrc
    finally:
        server.shutdown()
    assert seen[0] is not None and seen[0].startswith("Basic ")
    assert seen[1] is None


DKMS_13 = (
    'PACKAGE_NAME="habanalabs"\n'
    "KMD_LAST_GIT_SHA=abcdef1\n"
    '# BUILD_EXCLUSIVE_KERNEL="ignored: a comment"\n'
    'BUILD_EXCLUSIVE_KERNEL="^5\\."\n'
    'BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-"\n'
    "BUILD_EXCLUSIVE_ARCH='x86_64'\n"
)


def test_a_packages_kernel_restriction_is_read_as_the_shell_reads_it() -> None:
    """The last assignment wins, quotes go, comments are not assignments."""
    found = parse_build_exclusive(DKMS_13, "p.rpm: ./dkms.conf")
    assert found == BuildExclusive("^6\\.12\\.[0-9]+\\+deb13-", "x86_64")
    assert parse_build_exclusive("KMD_LAST_GIT_SHA=abcdef1\n", "x") == BuildExclusive()


def test_the_restriction_refuses_other_kernels_as_dkms_would() -> None:
    rule = parse_build_exclusive(DKMS_13, "x")
    assert rule.refusal("6.12.117+deb13-amd64", "x86_64") is None
    assert rule.refusal("6.12.117+deb13-rt-amd64", "x86_64") is None
    assert rule.refusal("6.1.0-55-amd64", "x86_64") == (
        "its dkms.conf builds only for a kernel matching "
        'BUILD_EXCLUSIVE_KERNEL="^6\\.12\\.[0-9]+\\+deb13-", and 6.1.0-55-amd64 does not '
        "match (DKMS skips it)"
    )
    refused = rule.refusal("6.12.117+deb13-arm64", "aarch64")
    assert refused and 'BUILD_EXCLUSIVE_ARCH="x86_64"' in refused
    # Unanchored, as bash's =~: a pattern anywhere in the release.
    assert BuildExclusive("deb13").refusal("6.12.117+deb13-amd64", "x86_64") is None


def test_a_restriction_that_is_no_regular_expression_names_the_field() -> None:
    with pytest.raises(DriverPackageError) as caught:
        parse_build_exclusive('BUILD_EXCLUSIVE_KERNEL="^6\\.(12"\n', "p.rpm: ./dkms.conf")
    assert str(caught.value).startswith(
        "p.rpm: ./dkms.conf: BUILD_EXCLUSIVE_KERNEL='^6\\\\.(12' is not a regular expression ("
    )
