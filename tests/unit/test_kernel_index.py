"""What the target kernel itself ships of the image's modules, from its module index: the same
names and the modules claiming the same devices are replaced (KMM removes them first, the
Module says so for exactly those kernels); a module built into the kernel refuses the pair
before building. The index is read from the toolkit through the registry, once."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

from habana_tasks.build import labels
from habana_tasks.build.kernel_index import KernelIndex, kernel_index, parse_index
from habana_tasks.build.plan import BUILT_IN, Action, BuildJob, replacing
from habana_tasks.core.errors import INPUTS as INPUTS_ORIGIN
from habana_tasks.core.errors import TransientHTTPError
from habana_tasks.maintenance import kmm
from habana_tasks.registry.client import RegistryClient
from habana_tasks.registry.manifests import OCI_MANIFEST
from tests.fake_registry import FakeRegistry
from tests.kmm_schema import schema_errors
from tests.samples import CONFIG, INPUTS, TARGET

GAUDI = "pci:v00001DA3d00001000sv*sd*bc*sc*i*"
GAUDI2 = "pci:v00001DA3d00001020sv*sd*bc*sc*i*"
# Debian 13's layout: the kernel's own habanalabs under drivers/accel, a rival claiming a
# Gaudi id under another name, and an unrelated module.
DEP = (
    "kernel/drivers/accel/habanalabs/habanalabs.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz\n"
    "kernel/drivers/misc/gaudi_rival.ko.xz:\n"
    "kernel/drivers/gpu/drm/drm.ko.xz:\n"
)
ALIAS = (
    f"# Aliases extracted from modules themselves.\nalias {GAUDI} habanalabs\n"
    f"alias {GAUDI2} habanalabs\nalias {GAUDI2} gaudi_rival\nalias pci:v00008086d* e1000e\n"
)


def test_the_kernels_own_module_and_its_rivals_are_replaced() -> None:
    index = parse_index(DEP, "kernel/drivers/tty/serial.ko\n", ALIAS)
    assert index.replaced(("habanalabs", "habana_example_ib")) == ("gaudi_rival", "habanalabs")
    assert index.built_in(("habanalabs",)) == ()
    # A Debian 12 kernel ships none of them.
    assert parse_index("kernel/drivers/gpu/drm/drm.ko:\n", "", "").replaced(("habanalabs",)) == ()


def job(index: KernelIndex) -> BuildJob:
    return replacing(BuildJob(TARGET, Action.BUILD, "not in the repository", INPUTS), index)


def test_the_plan_says_what_it_replaces_and_the_image_records_it() -> None:
    replaced = job(parse_index(DEP, "", ALIAS))
    assert replaced.action is Action.BUILD
    assert replaced.reason == (
        "not in the repository; replaces the kernel's own gaudi_rival, habanalabs"
    )
    assert replaced.inputs is not None
    made = labels.image_labels(CONFIG, TARGET, replaced.inputs, "x", "plain")
    assert made[labels.IN_TREE_REPLACED] == "gaudi_rival,habanalabs"
    # Nothing shipped: no label, the same labels as before.
    assert labels.IN_TREE_REPLACED not in labels.image_labels(CONFIG, TARGET, INPUTS, "x", "plain")


def test_a_kernel_that_builds_the_module_in_is_refused_before_building() -> None:
    refused = job(parse_index("", "kernel/drivers/accel/habanalabs/habanalabs.ko\n", ""))
    assert refused.action is Action.FAIL and refused.failure is not None
    assert refused.failure.step == BUILT_IN and refused.failure.origin == INPUTS_ORIGIN
    assert refused.reason == (
        f"{TARGET.kernel} builds habanalabs into the kernel (modules.builtin): no module of "
        "that name can be loaded beside it, and KMM cannot remove it"
    )
    skipped = BuildJob(TARGET, Action.SKIP, "up to date", INPUTS)
    assert replacing(skipped, parse_index("", "habanalabs.ko\n", "")) == skipped


def test_the_module_removes_the_kernels_own_modules_for_exactly_those_kernels() -> None:
    deb13 = replace(TARGET, kernel="6.12.117+deb13-amd64", tag="6.1.0-1-6.12.117_deb13-amd64")
    module = kmm.module_manifest([TARGET, deb13], replaced={deb13.kernel: ("habanalabs",)})
    assert schema_errors(module) == []
    mappings = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert mappings == [
        {"literal": TARGET.kernel, "containerImage": TARGET.image},
        {"literal": deb13.kernel, "containerImage": deb13.image,
         "inTreeModulesToRemove": ["habanalabs"]},
    ]  # fmt: skip
    # KMM 1.x's Module has one in-tree module to remove, in the singular field.
    old = kmm.module_manifest([replace(deb13, flavour="kmm1")], replaced={deb13.kernel: ("a",)})
    assert schema_errors(old) == []
    (mapping,) = old["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert mapping["inTreeModuleToRemove"] == "a" and "inTreeModulesToRemove" not in mapping


def test_the_index_is_read_once_per_toolkit_through_the_registry(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """From a merged-/usr toolkit's layer, as Debian's toolkits lay it out; kept by digest."""
    release = "6.12.117+deb13-amd64"
    base = f"./usr/lib/modules/{release}"
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        for name, text in (("modules.dep", DEP), ("modules.alias", ALIAS), ("modules.builtin", "")):
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    layer = body.getvalue()
    fake.add_image("dtk", release.replace("+", "_"), {}, OCI_MANIFEST)
    key = f"dtk:{release.replace('+', '_')}"
    manifest = json.loads(fake.manifests[key][1])
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    fake.blobs[digest] = layer
    manifest["layers"] = [{"mediaType": "x", "digest": digest, "size": len(layer)}]
    fake.manifests[key] = (OCI_MANIFEST, json.dumps(manifest).encode())
    client = RegistryClient([fake.host])
    toolkit = f"{fake.host}/{key}"
    first = kernel_index(client, tmp_path, toolkit, release, "x86_64")
    assert first.found and first.replaced(("habanalabs",)) == ("gaudi_rival", "habanalabs")
    before = client.requests_sent
    again = kernel_index(client, tmp_path, toolkit, release, "x86_64")
    assert again == first and client.requests_sent == before


def test_an_index_the_registry_could_not_give_fails_the_pair_not_silently() -> None:
    """Building as if the kernel shipped nothing could leave its own driver on the nodes."""
    fault = TransientHTTPError("r.example/dtk@sha256:1 (layer): HTTP 503")
    failed = replacing(BuildJob(TARGET, Action.BUILD, "not in the repository", INPUTS), fault)
    assert failed.action is Action.FAIL and failed.failure is not None
    assert failed.failure.transient and failed.failure.step == BUILT_IN
    assert failed.reason == (
        "the kernel's module index could not be read from its toolkit: "
        "r.example/dtk@sha256:1 (layer): HTTP 503"
    )
