"""A custom resource checked against its CRD's openAPIV3Schema (vendored under tests/crds and
tests/kmm with their licences), unknown fields refused as the API server's strict field
validation does; and the CRD's CEL rules (x-kubernetes-validations) on every field the
document sets, evaluated by cel-python (with Kubernetes' string `split`, which it lacks)."""

from __future__ import annotations

import base64
import copy
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import yaml
from celpy import celtypes
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
def served_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    found: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return found


@cache
def crd_schema(path: Path, version: str) -> dict[str, Any]:
    schema = copy.deepcopy(served_schema(path, version))
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


def _split(text: celtypes.Value, separator: celtypes.Value) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(separator))])


def _cel_value(value: Any, schema: dict[str, Any]) -> celtypes.Value:
    """A document's value as CEL sees it: `format: byte` strings are their decoded bytes."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return celtypes.MapType(
            {celtypes.StringType(k): _cel_value(v, properties.get(k, {})) for k, v in value.items()}
        )
    if isinstance(value, list):
        return celtypes.ListType([_cel_value(v, schema.get("items", {})) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if schema.get("format") == "byte":
        return celtypes.BytesType(base64.b64decode(value))
    return celtypes.StringType(value)


def _rules(
    schema: dict[str, Any], value: Any, where: str
) -> list[tuple[str, dict[str, str], Any, dict[str, Any]]]:
    """Each CEL rule that applies to the document: where, the rule, the value and its schema."""
    found = [(where, r, value, schema) for r in schema.get("x-kubernetes-validations", [])]
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value and key != "metadata":
                found += _rules(sub, value[key], f"{where}/{key}" if where else key)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += _rules(schema["items"], item, f"{where}/{index}")
    return found


def cel_errors(path: Path, version: str, document: dict[str, Any]) -> list[str]:
    """The message of each CEL rule of the CRD's `version` that the document breaks, or that
    cannot be evaluated (named: a rule is never skipped)."""
    environment = celpy.Environment()
    errors = []
    for where, rule, value, schema in _rules(served_schema(path, version), document, ""):
        compiled = environment.compile(rule["rule"])
        verdict = environment.program(compiled, functions={"split": _split}).evaluate(
            {"self": _cel_value(value, schema)}
        )
        if verdict != celtypes.BoolType(True):
            errors.append(f"{where or '<root>'}: {rule['message']} ({verdict!r})")
    return errors
