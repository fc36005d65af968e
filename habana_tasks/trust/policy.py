"""The node side: what a cluster needs to admit only the library's signed images, for the
clients that check cosign signatures — containers/image (CRI-O, podman: policy.json with a
sigstoreSigned requirement, and registries.d to read sigstore attachments), OpenShift's
ClusterImagePolicy and Kyverno's verifyImages. The key is written inline: one document each."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml

from habana_tasks.config.image_reference import ImageReference

FORMATS = ("policy-json", "registries-d", "clusterimagepolicy", "kyverno")
POLICY_NAME = "habana-ai-driver-signed"


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


def cluster_image_policy(repository: str, public_key_pem: str) -> dict[str, Any]:
    """OpenShift's config.openshift.io/v1 ClusterImagePolicy (the Machine Config Operator writes
    it into every node's policy.json and registries.d)."""
    return {
        "apiVersion": "config.openshift.io/v1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "scopes": [scope(repository)],
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
    key's signature and both attestations (transparency log not required: none is written)."""
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
                            "imageReferences": [scope(repository) + "*"],
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


def render(form: str, repository: str, public_key_pem: str) -> str:
    """The document in `form` (one of FORMATS), as a node operator applies it."""
    if form == "policy-json":
        return json.dumps(policy_json(repository, public_key_pem), indent=2) + "\n"
    if form == "registries-d":
        document = registries_d(repository)
    elif form == "clusterimagepolicy":
        document = cluster_image_policy(repository, public_key_pem)
    else:
        document = kyverno_policy(repository, public_key_pem)
    return yaml.safe_dump(document, sort_keys=False)
