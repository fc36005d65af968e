"""A custom resource checked against its CRD's openAPIV3Schema (vendored under tests/crds and
tests/kmm with their licences), unknown fields refused as the API server's strict field
validation does. CEL rules (x-kubernetes-validations) are not JSON Schema: tests check the
ones that matter by hand."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator


def strict(node: Any) -> Any:
    """Refuse unknown fields (by default the API server would prune them silently)."""
    if isinstance(node, dict):
        node = {key: strict(value) for key, value in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


@cache
def crd_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server itself, not by the CRD's schema.
    schema["properties"]["metadata"] = {"type": "object"}
    checked: dict[str, Any] = strict(schema)
    return checked


def crd_errors(path: Path, version: str, document: dict[str, Any]) -> list[str]:
    """Every way `document` breaks the CRD's schema for `version`; empty when it is valid."""
    validator = Draft7Validator(crd_schema(path, version))
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )
