"""Registry faults injected by a proxy in front of the real test registry: each one is survived
or fails closed within its bound, no credential leaves its host, no traceback."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from rich.console import Console

from devtools import local_upstream
from habana_tasks.build import service as build_service
from habana_tasks.build.plan import Action
from habana_tasks.cli import commands
from habana_tasks.config import versions_file
from habana_tasks.config.project import Project
from habana_tasks.core import errors
from habana_tasks.core.errors import RegistryError
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.registry.auth import Credentials
from habana_tasks.registry.client import Existence, RegistryClient
from tests import registry_proxy as proxy_faults
from tests.conftest import ROOT, RecordProperty
from tests.integration.conftest import KERNELS, UpstreamFixture, route_through
from tests.registry_proxy import (
    Answer,
    Faults,
    RawFault,
    Rewrite,
    basic_challenge,
    registry_proxy,
    send_partial,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability("registry faults")]

CANARY = "canary-Pa55-d0-not-leak"
FAST = RetryPolicy(attempts=2, base_delay=0.05, deadline=4.0, read_timeout=2.0)


def client(proxy: str, policy: RetryPolicy = FAST) -> RegistryClient:
    return RegistryClient(
        [proxy],
        HTTPClient(policy),
        credentials=lambda registry, repository: Credentials("robot", CANARY),
    )


def pushed(test_upstream: UpstreamFixture, repository: str, tags: tuple[str, ...]) -> None:
    u, runner = test_upstream.upstream, test_upstream.runner
    for tag in tags:
        image = f"{u.registry}/{repository}:{tag}"
        runner.run(["podman", "tag", local_upstream.LOCAL_BASE, image])
        runner.run(["podman", "push", "--quiet", "--tls-verify=false", image])


@pytest.mark.reliability("registry faults", outcome="refused, credential kept to its host")
def test_credentials_never_follow_a_link_to_another_host(test_upstream: UpstreamFixture) -> None:
    pushed(test_upstream, "faults/leak", ("a",))
    elsewhere_faults = Faults()
    with registry_proxy(test_upstream.upstream.registry, elsewhere_faults) as elsewhere:

        def link_away(line: str, answer: Answer) -> Answer | None:
            status, headers, body = answer
            if "/tags/list" in line:
                headers["Link"] = (
                    f'<http://{elsewhere}/v2/faults/leak/tags/list?last=a>; rel="next"'
                )
            return status, headers, body

        faults = Faults(raw=basic_challenge, rewrite=link_away)
        with (
            registry_proxy(test_upstream.upstream.registry, faults) as leaky,
            pytest.raises(RegistryError, match="next page is on another host"),
        ):
            client(leaky).list_tags(f"{leaky}/faults/leak")
    # The login went to the registry it belongs to, and the other host heard nothing at all.
    expected = "Basic " + base64.b64encode(f"robot:{CANARY}".encode()).decode()
    assert faults.authorizations == [expected]
    assert elsewhere_faults.seen == [] and elsewhere_faults.authorizations == []


@pytest.mark.reliability("registry faults", outcome="failed closed")
def test_pagination_that_loops_is_refused(test_upstream: UpstreamFixture) -> None:
    pushed(test_upstream, "faults/loop", ("a",))

    def loop(line: str, answer: Answer) -> Answer | None:
        status, headers, body = answer
        if "/tags/list" in line:
            headers["Link"] = '</v2/faults/loop/tags/list?n=1000>; rel="next"'
        return status, headers, body

    faults = Faults(rewrite=loop)
    with (
        registry_proxy(test_upstream.upstream.registry, faults) as proxy,
        pytest.raises(RegistryError, match="pagination loops back"),
    ):
        client(proxy).list_tags(f"{proxy}/faults/loop")
    # The page that points back at itself is read once and never asked for again.
    assert len([s for s in faults.seen if "/tags/list" in s]) == 1


MANIFEST_TYPE = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}


def cut_body(line: str, handler: BaseHTTPRequestHandler) -> bool:
    """Headers promise 1000 bytes; 10 arrive, then the connection closes."""
    if "/manifests/" in line:
        send_partial(handler, {**MANIFEST_TYPE, "Content-Length": "1000"}, b'{"schemaVe')
        return True
    return False


def cut_chunked(line: str, handler: BaseHTTPRequestHandler) -> bool:
    """A chunked body that stops in the middle of a chunk, then the connection closes."""
    if "/manifests/" in line:
        chunked = {**MANIFEST_TYPE, "Transfer-Encoding": "chunked"}
        send_partial(handler, chunked, b'400\r\n{"schemaVersion": 2')
        return True
    return False


def trickle(line: str, handler: BaseHTTPRequestHandler) -> bool:
    """A body of 10,000 bytes, one byte every 0.2 s: each read succeeds, the whole never ends."""
    if "/manifests/" in line:
        send_partial(handler, {"Content-Length": "10000"}, b" " * 10_000, pause=0.2)
        return True
    return False


@pytest.mark.parametrize(("fault", "message"), [(cut_body, "cannot reach"), (trickle, "in time")])
def test_a_cut_or_trickling_body_fails_closed_within_the_bound(
    test_upstream: UpstreamFixture, fault: RawFault, message: str, record_property: RecordProperty
) -> None:
    pushed(test_upstream, "faults/body", ("a",))
    with registry_proxy(test_upstream.upstream.registry, Faults(raw=fault)) as proxy:
        started = time.monotonic()
        remote = client(proxy).inspect(f"{proxy}/faults/body:a")
        seconds = time.monotonic() - started
    assert remote.existence is Existence.UNKNOWN and message in (remote.error or ""), remote
    # The bound: the operation deadline plus at most one read timeout.
    assert seconds < FAST.deadline + FAST.read_timeout + 1, seconds
    record_property("outcome", "failed closed")
    record_property("seconds", seconds)


@pytest.mark.reliability("registry faults", outcome="failed closed")
def test_a_malformed_toolkit_manifest_fails_the_target_not_rebuilds_it(
    test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream

    def no_config(line: str, answer: Answer) -> Answer | None:
        status, headers, body = answer
        if "/driver-toolkit/manifests/" not in line or line.startswith("HEAD"):
            return None
        data = json.loads(body)
        data.pop("config", None)
        new = json.dumps(data).encode()
        headers.pop("Docker-Content-Digest", None)
        return status, headers, new

    with registry_proxy(u.registry, Faults(rewrite=no_config)) as proxy:
        plain = test_upstream.versions(
            tmp_path / "plain.toml", KERNELS[:1], repository="faults/malformed-toolkit"
        )
        versions = route_through(plain, tmp_path / "versions.toml", "image", u.registry, proxy)
        project = Project(ROOT, cache_dir=tmp_path / "cache")
        cfg = versions_file.load(versions)
        run = build_service.resolve_and_plan(project, cfg, cfg.targets)
    (job,) = run.jobs
    assert job.action is Action.FAIL, job
    assert "malformed manifest: config is not a descriptor object" in job.reason
    assert proxy in job.reason


@pytest.mark.reliability("registry faults", outcome="failed closed")
def test_status_json_says_when_tags_could_not_be_listed(
    test_upstream: UpstreamFixture, tmp_path: Path
) -> None:
    u = test_upstream.upstream

    def broken_list(line: str, answer: Answer) -> Answer | None:
        return (
            (200, {"Content-Type": "application/json"}, b"not json")
            if "/tags/list" in line
            else None
        )

    with registry_proxy(u.registry, Faults(rewrite=broken_list)) as proxy:
        plain = test_upstream.versions(
            tmp_path / "plain.toml", KERNELS[:1], repository="faults/tags"
        )
        versions = route_through(plain, tmp_path / "versions.toml", "repository", u.registry, proxy)
        out = io.StringIO()
        code = commands.status_command(
            Project(ROOT, cache_dir=tmp_path / "cache"),
            str(versions),
            output_format="json",
            console=Console(file=out, width=200),
        )
    data = json.loads(out.getvalue())
    assert code == errors.UNKNOWN_STATE
    assert data["unnamed_tags"] is None
    assert "the tag list is not JSON (8 bytes)" in data["errors"][0]


def strip_digest(line: str, answer: Answer) -> Answer | None:
    status, headers, body = answer
    headers.pop("Docker-Content-Digest", None)
    return status, headers, body


def wrong_digest(line: str, answer: Answer) -> Answer | None:
    status, headers, body = answer
    if "/manifests/" in line:
        headers["Docker-Content-Digest"] = "sha256:" + "e" * 64
    return status, headers, body


def without_annotations(line: str, answer: Answer) -> Answer | None:
    """An image from before annotations: its labels are read from its config blob."""
    status, headers, body = answer
    if "/manifests/" in line and line.startswith("GET") and status == 200:
        manifest = json.loads(body)
        if isinstance(manifest, dict) and manifest.pop("annotations", None) is not None:
            new = json.dumps(manifest).encode()
            headers["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(new).hexdigest()
            return status, headers, new
    return None


def tampered_blob(line: str, answer: Answer) -> Answer | None:
    status, headers, body = answer
    if "/blobs/sha256:" in line and line.startswith("GET") and body.startswith(b"{"):
        return status, headers, body.replace(b'"Labels":{', b'"Labels":{"evil":"1",', 1)
    return without_annotations(line, answer)


def with_annotations(value: object) -> Rewrite:
    """The manifest's annotations replaced by `value` (the manifest's digest follows it)."""

    def rewrite(line: str, answer: Answer) -> Answer | None:
        status, headers, body = answer
        if "/manifests/" in line and line.startswith("GET") and status == 200:
            manifest = json.loads(body)
            manifest["annotations"] = value
            new = json.dumps(manifest).encode()
            headers["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(new).hexdigest()
            return status, headers, new
        return None

    return rewrite


def not_json(line: str, answer: Answer) -> Answer | None:
    if "/manifests/" in line and line.startswith("GET"):
        return 200, {"Content-Type": "text/html"}, b"<html>maintenance</html>"
    return None


def replace_body(pattern: str, body: bytes) -> Rewrite:
    """Answer 200 with `body` (as JSON) for GETs matching pattern: a document of the wrong type."""
    compiled = re.compile(pattern)

    def rewrite(line: str, answer: Answer) -> Answer | None:
        if line.startswith("GET") and compiled.search(line):
            return 200, {"Content-Type": "application/json"}, body
        return None

    return rewrite


def config_blob(body: bytes) -> Rewrite:
    """Replace every image config blob (the JSON blobs) with body; its digest no longer matches
    unless the manifest is rewritten too, so the manifest is rewritten to point at it."""

    blob_digest = "sha256:" + hashlib.sha256(body).hexdigest()

    def rewrite(line: str, answer: Answer) -> Answer | None:
        status, headers, data = answer
        if not line.startswith("GET"):
            return None
        if f"/blobs/{blob_digest}" in line:  # the registry has no such blob: the proxy serves it
            return 200, {"Content-Type": "application/octet-stream"}, body
        if "/manifests/" in line and status == 200:
            manifest = json.loads(data)
            manifest["config"]["digest"] = blob_digest
            manifest["config"]["size"] = len(body)
            manifest.pop("annotations", None)  # an image from before annotations
            new = json.dumps(manifest).encode()
            headers["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(new).hexdigest()
            return status, headers, new
        return None

    return rewrite


def bearer_token_service(token_body: bytes) -> RawFault:
    """The registry asks for a Bearer token from a token service (the proxy's /token), which
    answers token_body; with the token the request is forwarded."""

    def fault(line: str, handler: BaseHTTPRequestHandler) -> bool:
        if line.startswith("GET /token"):
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(token_body)))
            handler.end_headers()
            handler.wfile.write(token_body)
            return True
        if handler.headers.get("Authorization", "").startswith("Bearer "):
            return False
        host = handler.headers["Host"]
        handler.send_response(401)
        handler.send_header(
            "WWW-Authenticate", f'Bearer realm="http://{host}/token",service="faults"'
        )
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    return fault


TOO_LARGE = b'{"token": "' + b"x" * (RetryPolicy().max_body + 1) + b'"}'
MANIFESTS = r"/v2/library/[^ ]*/manifests/"
fail_with, reset, hang = proxy_faults.fail_with, proxy_faults.reset, proxy_faults.hang
LOGIN = {"WWW-Authenticate": 'Basic realm="x"'}
# (fault, what the plan must decide, what its reason must say)
FAULTS: dict[str, tuple[Faults, str, str]] = {
    "500-twice-then-ok": (Faults(raw=fail_with(MANIFESTS, 500, 2)), "skip", "up to date"),
    "429-retry-after-then-ok": (
        Faults(raw=fail_with(MANIFESTS, 429, 1, {"Retry-After": "1"})),
        "skip",
        "up to date",
    ),
    "reset-once-then-ok": (Faults(raw=reset(MANIFESTS, 1)), "skip", "up to date"),
    "digest-header-stripped": (Faults(rewrite=strip_digest), "skip", "up to date"),
    "503-forever": (Faults(raw=fail_with(MANIFESTS, 503, -1)), "fail", "HTTP 503 after 2 attempt"),
    "hang-forever": (Faults(raw=hang(MANIFESTS, 30)), "fail", "timed out"),
    "wrong-digest-header": (Faults(rewrite=wrong_digest), "fail", "the manifest body hashes to"),
    "tampered-config-blob": (Faults(rewrite=tampered_blob), "fail", "does not hash to its digest"),
    "html-404": (Faults(raw=fail_with(MANIFESTS, 404, -1)), "fail", "HTTP 404"),
    "401-forever": (Faults(raw=fail_with(MANIFESTS, 401, -1, LOGIN)), "fail", "needs a login"),
    "manifest-not-json": (Faults(rewrite=not_json), "fail", "is not JSON"),
    "body-cut-forever": (Faults(raw=cut_body), "fail", "cannot reach"),
    # Documents of the wrong JSON type, one per kind of document the client reads.
    "manifest-is-a-list": (Faults(rewrite=replace_body(MANIFESTS, b"[]")), "fail", "not a JSON"),
    "manifest-too-large": (
        Faults(rewrite=replace_body(MANIFESTS, b" " * (RetryPolicy().max_body + 1))),
        "fail",
        "larger than",
    ),
    "config-blob-not-json": (Faults(rewrite=config_blob(b"<html>")), "fail", "is not JSON"),
    "config-blob-is-a-list": (Faults(rewrite=config_blob(b"[1]")), "fail", "not a JSON object"),
    "labels-not-strings": (
        Faults(rewrite=config_blob(b'{"config": {"Labels": {"a": 1}}}')),
        "fail",
        "not a map of strings",
    ),
    "config-is-a-list": (
        Faults(rewrite=config_blob(b'{"config": [1]}')),
        "fail",
        "not a map of strings",
    ),
    "annotations-not-strings": (
        Faults(rewrite=with_annotations({"io.habana-ai-driver.fingerprint": 1})),
        "fail",
        "the manifest's annotations is not a map of strings",
    ),
    "error-body-is-a-list": (
        Faults(rewrite=lambda line, a: (404, {}, b"[]") if "/manifests/" in line else None),
        "fail",
        "HTTP 404",
    ),
    "401-without-challenge": (
        Faults(raw=fail_with(MANIFESTS, 401, -1)),
        "fail",
        "unsupported auth challenge",
    ),
    "token-not-json": (Faults(raw=bearer_token_service(b"<html>")), "fail", "is not JSON"),
    "token-is-a-list": (Faults(raw=bearer_token_service(b"[]")), "fail", "not a JSON object"),
    "token-expires-soon": (
        Faults(raw=bearer_token_service(b'{"token": "t", "expires_in": "soon"}')),
        "fail",
        "expires_in = 'soon'",
    ),
    "token-missing": (
        Faults(raw=bearer_token_service(b'{"expires_in": 60}')),
        "fail",
        "holds no token",
    ),
    "token-too-large": (Faults(raw=bearer_token_service(TOO_LARGE)), "fail", "larger than"),
    "token-ok": (
        Faults(raw=bearer_token_service(b'{"token": "t", "expires_in": 300}')),
        "skip",
        "up to date",
    ),
    "chunked-body-cut-forever": (Faults(raw=cut_chunked), "fail", "cannot reach"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_registry_fault_is_survived_or_fails_closed(
    name: str,
    library: tuple[Project, Path],
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    faults, decision, reason = FAULTS[name]
    _, versions = library
    cfg = versions_file.load(versions)
    registry = cfg.repository.split("/", 1)[0]
    with registry_proxy(registry, faults) as proxy:
        through = route_through(versions, tmp_path / "versions.toml", "repository", registry, proxy)
        proxied = versions_file.load(through)
        project = Project(ROOT, cache_dir=tmp_path / "cache")  # nothing cached
        started = time.monotonic()
        run = build_service.resolve_and_plan(
            project, proxied, proxied.targets, http=HTTPClient(FAST)
        )
        seconds = time.monotonic() - started
    assert {job.action.value for job in run.jobs} == {decision}, [j.reason for j in run.jobs]
    assert all(reason in job.reason for job in run.jobs), [j.reason for j in run.jobs]
    if decision == "fail":
        assert all(proxy in job.reason for job in run.jobs)  # names the registry
    assert seconds < FAST.deadline + FAST.read_timeout + 2, seconds
    record_property("outcome", "survived" if decision == "skip" else "failed closed")
    record_property("seconds", seconds)
