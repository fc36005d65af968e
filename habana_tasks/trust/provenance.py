"""The image's SLSA v1 provenance predicate, built with in-toto-attestation's own model: what
was asked for (the pair, the versions file, the library's repository and revision), what it
resolved to (toolkit, base, packages, Dockerfile, the tool itself, each by digest), who built
it and when. The builder is what the signature vouches for — the library's key, and the kind of
runner — never a URL an environment variable merely asserts; the CI run's URL, when there is
one, identifies the invocation, which is unique to this run. No host name is published."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

BUILD_TYPE = "urn:habana-ai-driver:build-type:kmm-driver-image:v1"
BUILDER = "urn:habana-ai-driver:builder"
RUN = uuid.uuid4()  # this run's own identity: invocation ids are unique across runs and hosts


@dataclass(frozen=True)
class Dependency:
    """One resolved input, by digest (sha256 hex, no prefix)."""

    name: str
    uri: str
    sha256: str


@dataclass(frozen=True)
class ProvenanceInputs:
    kernel: str
    driver: str
    tag: str
    repository: str
    source: str  # the library's source repository ([library] source)
    revision: str  # its commit, when known
    versions_file: str  # its path as given
    versions_sha256: str
    dependencies: tuple[Dependency, ...]
    tool_version: str
    invocation: str  # the run's stamp (its log folder's name)
    signing_key: str  # the public key (PEM) of the key that signs the attestation
    started: datetime
    finished: datetime
    # Attested after the image was built, without rebuilding it: the run's times are the
    # attestation's, not the build's.
    after_build: bool = False


def runner_kind(environ: Mapping[str, str]) -> str:
    """The kind of runner: a GitHub Actions runner (as it says of itself), else local."""
    return "github-actions" if environ.get("GITHUB_ACTIONS") == "true" else "local"


def key_id(public_key_pem: str) -> str:
    """The signing key's identity: sha256 of its PEM body (the DER), as a verifier can compute."""
    lines = public_key_pem.splitlines()
    body = "".join(line for line in lines if line and not line.startswith("-----"))
    if not body:
        return "no-key"
    return "sha256:" + hashlib.sha256(base64.b64decode(body)).hexdigest()


def builder_id(environ: Mapping[str, str], public_key_pem: str) -> str:
    """urn:habana-ai-driver:builder:<runner kind>:<key id>: what ran, and the key that vouches
    for it (anyone holding the key signs as this builder: the id says no more than that)."""
    return f"{BUILDER}:{runner_kind(environ)}:{key_id(public_key_pem)}"


def invocation_id(environ: Mapping[str, str], stamp: str) -> str:
    """The CI run's URL (with its attempt) when there is one, and this run's own id: unique."""
    own = f"{stamp}/{RUN}"
    if environ.get("GITHUB_RUN_ID") and environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        run = f"{server}/{environ['GITHUB_REPOSITORY']}/actions/runs/{environ['GITHUB_RUN_ID']}"
        attempt = environ.get("GITHUB_RUN_ATTEMPT", "")
        return f"{run}/attempts/{attempt}#{own}" if attempt else f"{run}#{own}"
    return f"urn:habana-ai-driver:run:{own}"


def revision(environ: Mapping[str, str]) -> str:
    return environ.get("GITHUB_SHA", "")


def predicate(inputs: ProvenanceInputs, environ: Mapping[str, str] | None = None) -> str:
    """The predicate as JSON (cosign wraps it in the in-toto statement it signs)."""
    environ = os.environ if environ is None else environ
    message = provenance_pb2.Provenance()
    definition = message.build_definition
    definition.build_type = BUILD_TYPE
    definition.external_parameters.update(
        {
            "kernel": inputs.kernel,
            "driver": inputs.driver,
            "tag": inputs.tag,
            "repository": inputs.repository,
            "source": {"uri": inputs.source, "revision": inputs.revision},
            "versionsFile": {"path": inputs.versions_file, "sha256": inputs.versions_sha256},
        }
    )
    if inputs.after_build:
        definition.internal_parameters.update({"attestedAfterBuild": True})
    for dependency in inputs.dependencies:
        added = definition.resolved_dependencies.add(name=dependency.name, uri=dependency.uri)
        added.digest["sha256"] = dependency.sha256
    details = message.run_details
    details.builder.id = builder_id(environ, inputs.signing_key)
    details.builder.version["habana-tasks"] = inputs.tool_version
    details.metadata.invocation_id = invocation_id(environ, inputs.invocation)
    details.metadata.started_on.FromDatetime(inputs.started.astimezone(UTC))
    details.metadata.finished_on.FromDatetime(inputs.finished.astimezone(UTC))
    document = json_format.MessageToDict(message)
    # SLSA v1 spells it invocationID; the protobuf model's JSON name is invocationId.
    metadata = document["runDetails"]["metadata"]
    metadata["invocationID"] = metadata.pop("invocationId")
    return json.dumps(document, indent=2)
