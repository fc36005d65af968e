"""The cluster documents `invoke trust-policy` writes, against the CRDs of the releases that
read them (tests/crds): the ClusterImagePolicy API each OpenShift minor serves, its schema and
CEL rules (cel-python); a scope its rules refuse is refused first, with a one-line error;
Kyverno's patterns cover exactly the library's repository."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from habana_tasks.core.errors import UsageError
from habana_tasks.trust import policy
from tests.crd_schema import cel_errors, crd_errors

CRDS = Path(__file__).resolve().parents[1] / "crds" / "openshift"
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
# Per OpenShift minor: the apiVersion written, and the CRD (as that release serves it) to check.
RELEASES = {
    "4.16": (
        "config.openshift.io/v1alpha1",
        "release-4.19/config.openshift.io_clusterimagepolicies-TechPreviewNoUpgrade.yaml",
    ),
    "4.19": (
        "config.openshift.io/v1alpha1",
        "release-4.19/config.openshift.io_clusterimagepolicies-TechPreviewNoUpgrade.yaml",
    ),
    "4.20": (
        "config.openshift.io/v1",
        "release-4.20/config.openshift.io_clusterimagepolicies-Default.yaml",
    ),
    "4.22": ("config.openshift.io/v1", "config.openshift.io_clusterimagepolicies.yaml"),
}
REPOSITORIES = (
    "quay.io/habana/driver",
    "registry.example.com:5000/a/b_c/d-e",
    "localhost:5000/library/x",
    "localhost/library/x",
    "127.0.0.1:5055/library/x",
    "registry:5000/library/x",
    "my-registry:443/habana",
    "quay.io/a__b/c",
    "quay.io/a.b-c/d",
)


def unchecked(repository: str, openshift: str) -> dict[str, Any]:
    """The document with the scope as the repository names it, before the tool's own check."""
    document = policy.cluster_image_policy("quay.io/x/y", PEM, openshift)
    document["spec"]["scopes"] = [policy.scope(repository)]
    return document


@pytest.mark.parametrize("openshift", sorted(RELEASES))
def test_each_release_gets_the_api_it_serves_valid_against_its_crd(openshift: str) -> None:
    api, crd = RELEASES[openshift]
    document = policy.cluster_image_policy("quay.io/habana/driver", PEM, openshift)
    assert document["apiVersion"] == api
    version = api.rsplit("/", 1)[1]
    assert crd_errors(CRDS / crd, version, document) == []
    assert cel_errors(CRDS / crd, version, document) == []
    # The rules are evaluated, not skipped: a root of trust without its key breaks one.
    del document["spec"]["policy"]["rootOfTrust"]["publicKey"]
    broken = cel_errors(CRDS / crd, version, document)
    assert broken == [
        "spec/policy/rootOfTrust: publicKey is required when policyType is PublicKey, and "
        "forbidden otherwise (BoolType(False))"
    ], broken


def test_a_release_before_cluster_image_policy_is_refused_naming_what_to_use() -> None:
    with pytest.raises(
        UsageError, match=r"^--openshift 4\.15: OpenShift serves ClusterImagePolicy from 4\.16"
    ):
        policy.cluster_image_policy("quay.io/habana/driver", PEM, "4.15")
    assert policy.cluster_image_policy_api(None) == "config.openshift.io/v1"
    with pytest.raises(UsageError, match="only --format clusterimagepolicy"):
        policy.render("kyverno", "quay.io/habana/driver", PEM, "4.18")


@pytest.mark.parametrize("openshift", sorted(RELEASES))
@pytest.mark.parametrize("repository", REPOSITORIES)
def test_a_scope_is_refused_exactly_when_the_crds_rules_refuse_it(
    openshift: str, repository: str
) -> None:
    api, crd = RELEASES[openshift]
    refused_by_crd = cel_errors(CRDS / crd, api.rsplit("/", 1)[1], unchecked(repository, openshift))
    try:
        policy.cluster_image_policy(repository, PEM, openshift)
    except UsageError as exc:
        assert refused_by_crd, f"refused, the CRD accepts it: {exc}"
        assert str(exc).startswith(f"repository {repository!r}: ClusterImagePolicy refuses")
        assert "\n" not in str(exc)
    else:
        assert not refused_by_crd


def test_kyverno_patterns_match_the_repository_by_tag_or_digest_and_nothing_beside_it() -> None:
    """Kyverno matches imageReferences as wildcards (`*` spans any characters, as fnmatch's)."""
    repository = "quay.io/habana/driver"
    document = policy.kyverno_policy(repository, PEM)
    patterns = document["spec"]["rules"][0]["verifyImages"][0]["imageReferences"]
    digest = "sha256:" + "a" * 64
    matched = (f"{repository}:1.6.0-6.1.0", f"{repository}@{digest}", f"{repository}:t@{digest}")
    beside = (f"{repository}-signed:1.6.0", f"{repository}/sub:1", f"{repository}2@{digest}")
    assert all(any(fnmatchcase(i, p) for p in patterns) for i in matched)
    assert not any(fnmatchcase(i, p) for i in beside for p in patterns)
