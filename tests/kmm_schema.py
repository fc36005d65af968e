"""KMM's own Module schema (tests/kmm, vendored with its licence) and its loading semantics."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

CRD = Path(__file__).parent / "kmm" / "kmm.sigs.x-k8s.io_modules.yaml"


def _strict(node: Any) -> Any:
    """Refuse unknown fields, as the API server's strict field validation does (by default it
    would prune them silently: a misspelt field would vanish instead of failing)."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@cache
def module_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server itself, not by the CRD's schema.
    schema["properties"]["metadata"] = {"type": "object"}
    strict: dict[str, Any] = _strict(schema)
    return strict


def schema_errors(module: dict[str, Any]) -> list[str]:
    """Every way `module` breaks KMM's v1beta1 Module schema; empty when it is valid."""
    validator = Draft7Validator(module_schema())
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(module)
    )


def kmm_softdep_conf(modprobe: dict[str, Any]) -> str:
    """What KMM's controller writes for modulesLoadingOrder (getModulesOrderAnnotationValue in
    kubernetes-sigs/kernel-module-management): the worker pod's softdep.conf, one line per
    consecutive pair, "softdep <module> pre: <the module it depends on>"."""
    order = modprobe.get("modulesLoadingOrder") or []
    return "".join(f"softdep {a} pre: {b}\n" for a, b in itertools.pairwise(order))


def kmm_load_sequence(modprobe: dict[str, Any]) -> Sequence[str]:
    """The order in which KMM's worker loads modules: it runs `modprobe -d <dirName>
    <moduleName>` with that softdep.conf, and modprobe loads a module's `pre:` soft
    dependencies (each with its own, first) before the module itself. Derived from the softdep
    lines, as modprobe reads them, never from the list's order directly."""
    order = modprobe.get("modulesLoadingOrder")
    if order:
        assert modprobe["moduleName"] == order[0], "moduleName must be modulesLoadingOrder's first"
        assert len(set(order)) == len(order), "a module listed twice"
    pre: dict[str, list[str]] = {}
    for line in kmm_softdep_conf(modprobe).splitlines():
        words = line.split()
        assert words[0] == "softdep" and words[2] == "pre:", line
        pre.setdefault(words[1], []).extend(words[3:])
    loaded: list[str] = []

    def load(module: str) -> None:
        if module in loaded:
            return
        for dependency in pre.get(module, []):
            load(dependency)
        loaded.append(module)

    load(modprobe["moduleName"])
    return loaded
