"""KMM's own Module schema (tests/kmm, vendored with its licence) and its loading semantics."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.crd_schema import crd_errors, crd_schema

CRD = Path(__file__).parent / "kmm" / "kmm.sigs.x-k8s.io_modules.yaml"


def module_schema() -> dict[str, Any]:
    return crd_schema(CRD, "v1beta1")


def schema_errors(module: dict[str, Any]) -> list[str]:
    """Every way `module` breaks KMM's v1beta1 Module schema; empty when it is valid."""
    return crd_errors(CRD, "v1beta1", module)


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
