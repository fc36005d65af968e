"""The node side: what a cluster needs to admit only the library's signed images, for the
clients that check cosign signatures — containers/image (CRI-O, podman: policy.json with a
sigstoreSigned requirement, and registries.d to read sigstore attachments), OpenShift's
ClusterImagePolicy and Kyverno's verifyImages. The key is written inline: one document each."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import yaml

from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import UsageError

FORMATS = ("policy-json", "registries-d", "clusterimagepolicy", "kyverno")
POLICY_NAME = "habana-ai-driver-signed"
# The ClusterImagePolicy API each OpenShift release serves (openshift/api's release branches):
# none before 4.16; v1alpha1 from 4.16 to 4.19, only with the TechPreviewNoUpgrade feature set;
# v1 from 4.20.
CLUSTER_IMAGE_POLICY_APIS = (
    ((4, 20), "config.openshift.io/v1"),
    ((4, 16), "config.openshift.io/v1alpha1"),
)
# The scope grammar of the CRD's CEL rules (both versions): a host with a dot or localhost,
# lowercase path components.
SCOPE_RE = re.compile(
    r"^(?:(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+(?::[0-9]+)?)"
    r"|(?:localhost(?::[0-9]+)?))"
    r"(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?\Z"
)


def scope(repository: str) -> str:
    """The library's repository as the scopes name it: registry/path, no tag."""
    return ImageReference.parse(repository + ":x").name


def policy_json(repository: str, public_key_pem: str) -> dict[str, Any]:
    """containers-policy.json(5): the library's repository requires a sigstore signature by the
    key, for the same repository (a tag moved onto another image is refused); other images as
    before (insecureAcceptAnything is the stock default: merge into the node's own policy)."""
    return {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                scope(repository): [
                    {
                        "type": "sigstoreSigned",
                        "keyData": base64.b64encode(public_key_pem.encode()).decode(),
                        "signedIdentity": {"type": "matchRepository"},
                    }
                ]
            }
        },
    }


def registries_d(repository: str) -> dict[str, Any]:
    """containers-registries.d(5): read sigstore signatures as cosign attaches them."""
    return {"docker": {scope(repository): {"use-sigstore-attachments": True}}}


def cluster_image_policy_api(openshift: str | None) -> str:
    """The ClusterImagePolicy apiVersion the OpenShift minor serves (None: the newest)."""
    if openshift is None:
        return CLUSTER_IMAGE_POLICY_APIS[0][1]
    major, minor = (int(part) for part in openshift.split("."))
    for since, api in CLUSTER_IMAGE_POLICY_APIS:
        if (major, minor) >= since:
            return api
    raise UsageError(
        f"--openshift {openshift}: OpenShift serves ClusterImagePolicy from 4.16 (v1alpha1, "
        "Tech Preview; v1 from 4.20); on older releases give nodes --format policy-json and "
        "registries-d through a MachineConfig"
    )


def cluster_scope(repository: str) -> str:
    """The repository as a ClusterImagePolicy scope, refused as its CRD's rules would refuse it."""
    named = scope(repository)
    host = named.split("/", 1)[0]
    if "." not in host and host.split(":", 1)[0] != "localhost":
        why = "a fully qualified domain name (with a dot) or localhost"
    elif not SCOPE_RE.match(named):
        why = "a host, then lowercase path components"
    else:
        return named
    raise UsageError(
        f"repository {repository!r}: ClusterImagePolicy refuses the scope {named!r}: its "
        f"registry must be named by {why}"
    )


def cluster_image_policy(
    repository: str, public_key_pem: str, openshift: str | None = None
) -> dict[str, Any]:
    """OpenShift's ClusterImagePolicy, in the API version `openshift` serves (the Machine Config
    Operator writes it into every node's policy.json and registries.d)."""
    return {
        "apiVersion": cluster_image_policy_api(openshift),
        "kind": "ClusterImagePolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "scopes": [cluster_scope(repository)],
            "policy": {
                "rootOfTrust": {
                    "policyType": "PublicKey",
                    "publicKey": {"keyData": base64.b64encode(public_key_pem.encode()).decode()},
                },
                "signedIdentity": {"matchPolicy": "MatchRepository"},
            },
        },
    }


def kyverno_policy(repository: str, public_key_pem: str) -> dict[str, Any]:
    """Kyverno's kyverno.io/v1 ClusterPolicy: every Pod image from the library must carry the
    key's signature and both attestations (transparency log not required: none is written).
    Its patterns name the repository exactly, by tag or digest (a sibling repository, as KMM's
    `<repository>-signed`, is not matched)."""
    keys = {
        "publicKeys": public_key_pem,
        "rekor": {"ignoreTlog": True},
        "ctlog": {"ignoreSCT": True},
    }
    attestors = [{"entries": [{"keys": keys}]}]
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "webhookTimeoutSeconds": 30,
            "rules": [
                {
                    "name": "signed-and-attested",
                    "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
                    "verifyImages": [
                        {
                            "imageReferences": [
                                scope(repository) + ":*",
                                scope(repository) + "@*",
                            ],
                            "failureAction": "Enforce",
                            "attestors": attestors,
                            "attestations": [
                                {"type": "https://cyclonedx.org/bom", "attestors": attestors},
                                {"type": "https://slsa.dev/provenance/v1", "attestors": attestors},
                            ],
                        }
                    ],
                }
            ],
        },
    }


def render(form: str, repository: str, public_key_pem: str, openshift: str | None = None) -> str:
    """The document in `form` (one of FORMATS), as a node operator applies it; `openshift`: the
    release whose ClusterImagePolicy API to write."""
    if openshift is not None and form != "clusterimagepolicy":
        raise UsageError(f"--openshift {openshift}: only --format clusterimagepolicy depends on it")
    if form == "policy-json":
        return json.dumps(policy_json(repository, public_key_pem), indent=2) + "\n"
    if form == "registries-d":
        document = registries_d(repository)
    elif form == "clusterimagepolicy":
        document = cluster_image_policy(repository, public_key_pem, openshift)
    else:
        document = kyverno_policy(repository, public_key_pem)
    return yaml.safe_dump(document, sort_keys=False)
