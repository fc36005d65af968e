"""The image's SLSA v1 provenance predicate, built with in-toto-attestation's own model: what
was asked for (the pair, the versions file, the library's repository and revision), what it
resolved to (toolkit, base, packages, Dockerfile, the tool itself, each by digest), who built
it (the CI run, else the host) and when."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

BUILD_TYPE = "urn:habana-ai-driver:build-type:kmm-driver-image:v1"


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
    invocation: str  # the run's stamp
    started: datetime
    finished: datetime
    # Attested after the image was built, without rebuilding it: the run's times are the
    # attestation's, not the build's.
    after_build: bool = False


def builder_id(environ: Mapping[str, str]) -> str:
    """The CI run under GitHub Actions (its URL), else this host."""
    if environ.get("GITHUB_RUN_ID") and environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{environ['GITHUB_REPOSITORY']}/actions/runs/{environ['GITHUB_RUN_ID']}"
    return f"https://{socket.gethostname()}.invalid/habana-tasks"


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
    details.builder.id = builder_id(environ)
    details.metadata.invocation_id = inputs.invocation
    details.metadata.started_on.FromDatetime(inputs.started.astimezone(UTC))
    details.metadata.finished_on.FromDatetime(inputs.finished.astimezone(UTC))
    return str(json_format.MessageToJson(message, indent=2))
