from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import DigestMismatchError, RegistryError
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.registry.auth import Credentials, challenge_params, find_credentials
from habana_tasks.registry.client import Existence, RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST
from tests.fake_registry import EMPTY_LAYER, FakeRegistry

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def client(fake: FakeRegistry, creds: Credentials | None = None, **policy: float) -> RegistryClient:
    sleeps: list[float] = []
    http = HTTPClient(RetryPolicy(**{"base_delay": 0.01, **policy}), sleep=sleeps.append)  # type: ignore[arg-type]
    c = RegistryClient([fake.host], http, credentials=lambda r, n: creds)
    c.sleeps = sleeps  # type: ignore[attr-defined]
    return c


def test_resolves_oci_manifest_and_verifies_digest(fake: FakeRegistry) -> None:
    d = fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    resolved = client(fake).resolve(f"{fake.host}/base/debian:12", "x86_64")
    assert resolved.digest == d
    assert resolved.index_digest is None
    assert resolved.pinned == f"{fake.host}/base/debian@{d}"


def test_every_manifest_type_is_accepted(fake: FakeRegistry) -> None:
    fake.add_image("base/debian", "12", {}, DOCKER_V2)
    client(fake).resolve(f"{fake.host}/base/debian:12", "x86_64")
    accept = fake.log[-1][2]["Accept"]
    for media_type in (OCI_MANIFEST, DOCKER_V2, "image.index.v1", "manifest.list.v2"):
        assert media_type in accept


def test_index_pins_the_platform_child(fake: FakeRegistry) -> None:
    amd = fake.add_image("ubi", "amd", {"a": "1"}, OCI_MANIFEST)
    arm = fake.add_image("ubi", "arm", {"a": "2"}, OCI_MANIFEST)
    index = fake.add_index("ubi", "8.6", {"amd64": amd, "arm64": arm})
    c = client(fake)
    got = c.resolve(f"{fake.host}/ubi:8.6", "aarch64")
    assert (got.digest, got.index_digest) == (arm, index)
    with pytest.raises(RegistryError, match="no linux/s390x manifest"):
        c.resolve(f"{fake.host}/ubi:8.6", "s390x")


def test_digest_header_mismatch_is_rejected(fake: FakeRegistry) -> None:
    fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    fake.tamper_digest = True
    with pytest.raises(DigestMismatchError, match="hashes to sha256:"):
        client(fake).resolve(f"{fake.host}/base/debian:12", "x86_64")


def test_missing_digest_header_falls_back_to_the_body_hash(fake: FakeRegistry) -> None:
    d = fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    fake.send_digest_header = False
    assert client(fake).resolve(f"{fake.host}/base/debian:12", "x86_64").digest == d


def test_body_not_matching_requested_digest_is_rejected(fake: FakeRegistry) -> None:
    fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    wrong = "sha256:" + "1" * 64
    _, body = fake.manifests["base/debian:12"]
    fake.manifests[f"base/debian:{wrong}"] = (OCI_MANIFEST, body)
    fake.send_digest_header = False
    with pytest.raises(DigestMismatchError):
        client(fake).get_manifest(ImageReference.parse(f"{fake.host}/base/debian@{wrong}"))


def test_token_challenge_then_success_with_credentials(fake: FakeRegistry) -> None:
    d = fake.add_image("private/x", "1", {}, OCI_MANIFEST)
    fake.token = "tok123"
    fake.require_basic = ("robot", "s3cret")
    c = client(fake, Credentials("robot", "s3cret"))
    assert c.resolve(f"{fake.host}/private/x:1", "x86_64").digest == d
    token_requests = [entry for entry in fake.log if entry[1].startswith("/token")]
    assert (
        len(token_requests) == 1 and "scope=repository%3Aprivate%2Fx%3Apull" in token_requests[0][1]
    )
    # A second lookup reuses the cached token: no new token request, no 401 round trip.
    before = len(fake.log)
    c.resolve(f"{fake.host}/private/x:1", "x86_64")
    assert len(fake.log) == before + 1


def test_parallel_lookups_share_one_token_and_later_scopes_skip_the_401(
    fake: FakeRegistry,
) -> None:
    for i in range(16):
        fake.add_image("lib/a", str(i), {}, OCI_MANIFEST)
    fake.add_image("lib/b", "1", {}, OCI_MANIFEST)
    fake.token = "tok123"
    c = client(fake)
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda i: c.inspect(f"{fake.host}/lib/a:{i}"), range(16)))
    assert all(r.existence is Existence.PRESENT for r in found)
    tokens = [entry for entry in fake.log if entry[1].startswith("/token")]
    assert len(tokens) == 1, tokens  # one token request for one scope, however many threads
    before = len(fake.log)
    assert c.inspect(f"{fake.host}/lib/b:1").existence is Existence.PRESENT
    later = [entry[1] for entry in fake.log[before:]]
    # Another repository of the same host: its token first (its own scope), then no 401.
    assert later[0].startswith("/token") and "repository%3Alib%2Fb%3Apull" in later[0]
    assert len([p for p in later if "/manifests/" in p]) == 1, later


def test_refused_credentials_are_unknown_not_absent(fake: FakeRegistry) -> None:
    fake.add_image("private/x", "1", {}, OCI_MANIFEST)
    fake.token = "tok123"
    fake.require_basic = ("robot", "s3cret")
    remote = client(fake, Credentials("robot", "wrong")).inspect(f"{fake.host}/private/x:1")
    assert remote.existence is Existence.UNKNOWN
    assert "token service refused access (401)" in (remote.error or "")
    assert "wrong" not in (remote.error or "")


def test_labels_come_from_the_manifests_annotations_when_they_hold_the_key(
    fake: FakeRegistry,
) -> None:
    """The builder writes the same map as labels and annotations: the manifest is enough."""
    both = {"io.habana-ai-driver.fingerprint": "sha256:1", "a": "b"}
    fake.add_image("lib/drv", "1", both, OCI_MANIFEST, annotations=both)
    c = client(fake)
    remote = c.inspect(f"{fake.host}/lib/drv:1", "io.habana-ai-driver.fingerprint")
    assert (remote.existence, remote.labels) == (Existence.PRESENT, both)
    assert c.requests_sent == 1
    # Without the key in the annotations (an image from before), the config blob is read.
    fake.add_image("lib/drv", "old", both, OCI_MANIFEST, annotations={"other": "x"})
    assert c.inspect(f"{fake.host}/lib/drv:old", "io.habana-ai-driver.fingerprint").labels == both
    assert c.requests_sent == 3


def test_annotations_that_are_not_strings_are_an_unknown_state(fake: FakeRegistry) -> None:
    key = "io.habana-ai-driver.fingerprint"
    fake.add_image("lib/drv", "1", {}, OCI_MANIFEST, annotations={key: 1})
    remote = client(fake).inspect(f"{fake.host}/lib/drv:1", key)
    assert remote.existence is Existence.UNKNOWN
    assert "the manifest's annotations is not a map of strings" in (remote.error or "")
    # Annotations that are no map at all are not the labels: the config blob says what they are.
    fake.add_image("lib/drv", "2", {"a": "b"}, OCI_MANIFEST, annotations=[key])
    assert client(fake).inspect(f"{fake.host}/lib/drv:2", key).labels == {"a": "b"}


def test_429_and_503_are_retried_then_succeed(fake: FakeRegistry) -> None:
    d = fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    fake.script = [(429, {"Retry-After": "2"}, b""), (503, {}, b"")]
    c = client(fake)
    assert c.resolve(f"{fake.host}/base/debian:12", "x86_64").digest == d
    assert c.sleeps == [2.0, 0.02]  # type: ignore[attr-defined]
    assert c.requests_sent == 3


def test_a_long_retry_after_waits_the_longest_backoff_and_a_date_is_read(
    fake: FakeRegistry,
) -> None:
    """A registry asking for two minutes gets max_delay (8 s) and the operation goes on within
    its deadline; Retry-After as an HTTP date (RFC 9110) in the past means now."""
    d = fake.add_image("base/debian", "12", {}, OCI_MANIFEST)
    fake.script = [
        (429, {"Retry-After": "120"}, b""),
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b""),
    ]
    c = client(fake)
    assert c.resolve(f"{fake.host}/base/debian:12", "x86_64").digest == d
    assert c.sleeps == [8.0, 0.0]  # type: ignore[attr-defined]


def test_500_forever_gives_a_clear_error_after_bounded_attempts(fake: FakeRegistry) -> None:
    fake.hook = lambda path: (500, {}, b"boom")
    c = client(fake, attempts=3)
    with pytest.raises(RegistryError) as info:
        c.resolve(f"{fake.host}/base/debian:12", "x86_64")
    assert str(info.value).endswith("/v2/base/debian/manifests/12: HTTP 500 after 3 attempt(s)")
    assert c.requests_sent == 3


def test_400_is_not_retried(fake: FakeRegistry) -> None:
    fake.hook = lambda path: (400, {}, b'{"errors":[{"code":"NAME_INVALID"}]}')
    c = client(fake)
    with pytest.raises(RegistryError, match=r"HTTP 400 \(NAME_INVALID\)"):
        c.resolve(f"{fake.host}/base/debian:12", "x86_64")
    assert c.requests_sent == 1


def test_unreachable_registry_is_a_clear_error() -> None:
    waits: list[float] = []
    http = HTTPClient(RetryPolicy(attempts=2, base_delay=0.01), sleep=waits.append)
    c = RegistryClient(["127.0.0.1:9"], http)
    remote = c.inspect("127.0.0.1:9/x/y:1")
    assert remote.existence is Existence.UNKNOWN
    assert "cannot reach 127.0.0.1 (connection refused) after 2 attempt(s)" in (remote.error or "")
    assert waits == [0.01]  # the back-off between the two attempts, asked for and not slept


def test_existence_is_tri_state(fake: FakeRegistry) -> None:
    d = fake.add_image("lib/drv", "1.0-k", {"fp": "abc"}, OCI_MANIFEST)
    c = client(fake)
    present = c.inspect(f"{fake.host}/lib/drv:1.0-k")
    assert (present.existence, present.digest, present.labels, present.size) == (
        Existence.PRESENT,
        d,
        {"fp": "abc"},
        len(EMPTY_LAYER),  # the compressed size the manifest declares for its one layer
    )
    assert c.inspect(f"{fake.host}/lib/drv:2.0-k").existence is Existence.ABSENT
    fake.hook = lambda path: (404, {}, b"<html>not here</html>")  # a proxy's 404: no error code
    assert c.inspect(f"{fake.host}/lib/drv:1.0-k").existence is Existence.UNKNOWN


def test_tags_follow_link_pagination(fake: FakeRegistry) -> None:
    pages = {
        "/v2/lib/drv/tags/list?n=1000": (
            200,
            {"Link": '</v2/lib/drv/tags/list?n=1000&last=b>; rel="next"'},
            b'{"tags":["a","b"]}',
        ),
        "/v2/lib/drv/tags/list?n=1000&last=b": (200, {}, b'{"tags":["c"]}'),
    }
    fake.hook = pages.get
    assert client(fake).list_tags(f"{fake.host}/lib/drv") == ["a", "b", "c"]


def test_credentials_most_specific_entry_wins(tmp_path: Path) -> None:
    def enc(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    auth = tmp_path / "auth.json"
    auth.write_text(
        json.dumps(
            {
                "auths": {
                    "quay.io": {"auth": enc("general:pw1")},
                    "quay.io/openshift-release-dev": {"auth": enc("release:pw2")},
                    "https://index.docker.io/v1/": {"auth": enc("hub:pw3")},
                }
            }
        )
    )
    env = {"REGISTRY_AUTH_FILE": str(auth)}
    assert find_credentials("quay.io", "openshift-release-dev/ocp-release", env) == Credentials(
        "release", "pw2"
    )
    assert find_credentials("quay.io", "other/repo", env) == Credentials("general", "pw1")
    assert find_credentials("docker.io", "library/debian", env) == Credentials("hub", "pw3")
    assert find_credentials("ghcr.io", "x/y", env) is None
    assert "pw2" not in repr(find_credentials("quay.io", "openshift-release-dev/x", env))


def test_config_blobs_are_cached_by_digest(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("lib/drv", "1.0-k", {"fp": "abc"}, OCI_MANIFEST)
    http = HTTPClient(RetryPolicy(attempts=1))
    c = RegistryClient([fake.host], http, credentials=lambda r, n: None, blob_cache=tmp_path)
    assert c.inspect(f"{fake.host}/lib/drv:1.0-k").labels == {"fp": "abc"}
    assert c.requests_sent == 2
    assert c.inspect(f"{fake.host}/lib/drv:1.0-k").labels == {"fp": "abc"}
    assert c.requests_sent == 3  # the manifest only: tags move, blobs do not
    # A damaged cache entry is not trusted.
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b'{"config": {"Labels": {"fp": "forged"}}}')
    assert c.inspect(f"{fake.host}/lib/drv:1.0-k").labels == {"fp": "abc"}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"},
            "an index without a 'manifests' list",
        ),
        (
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"digest": 42, "size": 1, "mediaType": OCI_MANIFEST}],
            },
            "manifests[0] has digest 42",
        ),
        (
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []},
            "config is not a descriptor object",
        ),
        (
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "layers": [],
                "config": {"digest": "sha256:" + "a" * 64, "size": "12", "mediaType": "x"},
            },
            "config has size '12'",
        ),
        (
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": "x"},
                "layers": "none",
            },
            "no 'layers' list",
        ),
        ({"schemaVersion": 1, "mediaType": OCI_MANIFEST}, "schemaVersion is 1, expected 2"),
        ([1, 2, 3], "not a JSON object"),
    ],
    ids=[
        "index-no-list",
        "index-entry-type",
        "no-config",
        "size-type",
        "layers-type",
        "schema-1",
        "not-object",
    ],
)
def test_a_malformed_manifest_is_never_pinned(fake: FakeRegistry, body: object, why: str) -> None:
    media = body.get("mediaType", OCI_MANIFEST) if isinstance(body, dict) else OCI_MANIFEST
    fake.manifests["base/bad:1"] = (media, json.dumps(body).encode())
    with pytest.raises(RegistryError) as info:
        client(fake).resolve(f"{fake.host}/base/bad:1", "x86_64")
    assert f"served a malformed manifest: {why}" in str(info.value)
    assert fake.host in str(info.value)


def test_proxy_and_ca_settings_are_read_once_per_origin_and_honour_no_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "registry.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    session = HTTPClient().session()

    def settings(url: str) -> tuple[str | None, object]:
        merged = session.merge_environment_settings(url, {}, True, None, None)
        return merged["proxies"].get("https"), merged["verify"]

    ca = str(tmp_path / "ca.pem")
    assert settings("https://registry.internal/v2/a") == (None, ca)
    assert settings("https://ghcr.io/v2/a") == ("http://proxy.invalid:3128", ca)
    monkeypatch.setenv("HTTPS_PROXY", "http://other.invalid:1")  # read once: the first stays
    assert settings("https://ghcr.io/v2/b/manifests/c") == ("http://proxy.invalid:3128", ca)
    assert settings("https://registry.internal/v2/b") == (None, ca)


def _layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _layered(fake: FakeRegistry, repository: str, tag: str, layers: tuple[bytes, ...]) -> str:
    """An image in the fake registry made of these layers, oldest first; its reference."""
    fake.add_image(repository, tag, {}, OCI_MANIFEST)
    manifest = json.loads(fake.manifests[f"{repository}:{tag}"][1])
    manifest["layers"] = []
    for body in layers:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        fake.blobs[digest] = body
        manifest["layers"].append({"mediaType": "x", "digest": digest, "size": len(body)})
    fake.manifests[f"{repository}:{tag}"] = (OCI_MANIFEST, json.dumps(manifest).encode())
    return f"{fake.host}/{repository}:{tag}"


def test_a_hidden_file_is_read_from_the_newest_layer_that_has_it(fake: FakeRegistry) -> None:
    """Member names are compared without their "./" prefix only: "./.conf" stays ".conf" (and
    a whiteout in a newer layer deletes what an older layer holds)."""
    older = _layer({"./.conf": b"old", "./etc/gone": b"x", "./conf": b"not me"})
    newer = _layer({"./.conf": b"new", "./etc/.wh.gone": b""})
    image = _layered(fake, "ocp/release", "4.90.2", (older, newer))
    client = RegistryClient([fake.host])
    assert client.read_file(image, "/.conf", "x86_64") == b"new"
    assert client.read_file(image, "conf", "x86_64") == b"not me"
    assert client.read_file(image, "/etc/gone", "x86_64") is None
    assert client.read_file(image, "/absent", "x86_64") is None


def test_the_first_of_several_paths_is_read_in_one_pass_over_the_layers(
    fake: FakeRegistry,
) -> None:
    """Preference order wins over layer order; a deleted preferred path falls to the next;
    each layer is fetched once for all the paths."""
    older = _layer({"./boot/config": b"from /boot", "./usr/src/.config": b"headers"})
    newer = _layer({"./usr/src/.config": b"newer headers", "./boot/.wh.gone": b""})
    image = _layered(fake, "dtk", "1", (older, newer))
    client = RegistryClient([fake.host])
    before = client.requests_sent
    found = client.read_first(image, ("/lib/config", "/boot/config", "/usr/src/.config"), "x86_64")
    assert found == ("/boot/config", b"from /boot")
    assert client.requests_sent - before == 3  # the manifest, then each layer once
    assert client.read_first(image, ("/boot/gone", "/usr/src/.config"), "x86_64") == (
        "/usr/src/.config",
        b"newer headers",
    )
    assert client.read_first(image, ("/nowhere", "/boot/gone"), "x86_64") is None


def test_several_files_are_read_in_one_pass_and_the_pass_stops_when_all_are_settled(
    fake: FakeRegistry,
) -> None:
    """Each path from the newest layer that names it (a whiteout deletes it); once every path
    is settled, older layers are not fetched."""
    oldest = _layer({"./a": b"oldest a", "./b": b"oldest b"})
    older = _layer({"./a": b"older a", "./c": b"c", "./.wh.b": b""})
    newer = _layer({"./a": b"newest a"})
    image = _layered(fake, "dtk", "2", (oldest, older, newer))
    client = RegistryClient([fake.host])
    before = client.requests_sent
    found = client.read_each(image, ("/a", "/b", "/c", "/nowhere"), "x86_64")
    assert found == {"/a": b"newest a", "/c": b"c"}
    assert client.requests_sent - before == 4  # the manifest and all three layers
    before = client.requests_sent
    assert client.read_each(image, ("/a", "/c"), "x86_64") == {"/a": b"newest a", "/c": b"c"}
    assert client.requests_sent - before == 3  # settled after two layers: the oldest not read


def test_a_pass_stops_once_what_is_held_is_enough(fake: FakeRegistry) -> None:
    """Alternative directories (lib/ or usr/lib/): the pass stops once the caller holds what
    it needs, not after reading every layer to settle the alternative never present."""
    base = _layer({"./usr/lib/modules/r/modules.dep": b"base's"})
    toolkit = _layer({"./usr/lib/modules/r/modules.dep": b"toolkit's"})
    image = _layered(fake, "dtk", "3", (base, toolkit))
    paths = ("/lib/modules/r/modules.dep", "/usr/lib/modules/r/modules.dep")
    client = RegistryClient([fake.host])
    before = client.requests_sent
    found = client.read_each(image, paths, "x86_64", lambda held: len(held) == 1)
    assert found == {"/usr/lib/modules/r/modules.dep": b"toolkit's"}
    assert client.requests_sent - before == 2  # the manifest and the newest layer
    before = client.requests_sent
    assert client.read_each(image, paths, "x86_64") == found
    assert client.requests_sent - before == 3  # without it, every layer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'realm="https://auth.example/token",service="registry.example",'
            'scope="repository:team/app:pull,push"',
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:team/app:pull,push",
            },
        ),
        (
            'realm="https://a.example/t", service="s"',
            {"realm": "https://a.example/t", "service": "s"},
        ),
        ('realm="https://a.example/t",error', {"realm": "https://a.example/t"}),
    ],
)
def test_a_challenges_parameters_keep_commas_inside_quotes(
    text: str, expected: dict[str, str]
) -> None:
    assert challenge_params(text) == expected
