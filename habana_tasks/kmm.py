"""A KMM `Module` for one driver version, mapping exactly the kernels the library holds."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from habana_tasks.config import BuildTarget, Config
from habana_tasks.errors import HabanaError
from habana_tasks.registry import Existence, RegistryClient

API_VERSION = "kmm.sigs.x-k8s.io/v1beta1"
# The driver requests firmware as "habanalabs/gaudi/<file>", relative to the firmware search path.
# The image ships it at /opt/lib/firmware/habanalabs/gaudi/, and KMM copies the *contents* of
# firmwarePath into the node's search path, so firmwarePath is /opt/lib/firmware (one level
# deeper, /opt/lib/firmware/habanalabs, would make the driver's requests miss).
FIRMWARE_PATH = "/opt/lib/firmware"
MODULES_DIR = "/opt"
# Nodes with a Habana device (PCI vendor 0x1da3), as labelled by Node Feature Discovery.
NODE_SELECTOR = {"feature.node.kubernetes.io/pci-1da3.present": "true"}


def loading_order(modules: Sequence[str]) -> list[str]:
    """`modules` is in load order; the CRD's modulesLoadingOrder is the reverse: "upmost module,
    then the module it depends on", and KMM loads it from the last element to the first, with
    moduleName equal to the first element. So independent modules load in their declared order."""
    return list(reversed(modules))


def module_manifest(
    targets: Sequence[BuildTarget],
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
    with_firmware: bool = False,
) -> dict[str, Any]:
    """Literal kernelMappings, one per target, each naming its exact image tag."""
    if not targets:
        raise ValueError("no images to map")
    order = loading_order(targets[0].modules)
    modprobe: dict[str, Any] = {"moduleName": order[0], "dirName": MODULES_DIR}
    if len(order) > 1:
        modprobe["modulesLoadingOrder"] = order
    if with_firmware:
        modprobe["firmwarePath"] = FIRMWARE_PATH
    mappings = [
        {"literal": t.kernel, "containerImage": t.image}
        for t in sorted(targets, key=lambda t: t.kernel)
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "Module",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "moduleLoader": {"container": {"modprobe": modprobe, "kernelMappings": mappings}},
            "selector": dict(NODE_SELECTOR),
        },
    }


def library_module(
    config: Config,
    driver: str,
    registry: RegistryClient,
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
) -> dict[str, Any]:
    """The Module for one driver, mapping every kernel whose image the repository holds."""
    targets = config.select(driver=driver)
    with ThreadPoolExecutor(16) as pool:
        remote = list(pool.map(lambda t: registry.inspect(t.image), targets))
    unknown = [r for r in remote if r.existence is Existence.UNKNOWN]
    if unknown:
        raise HabanaError(f"{unknown[0].reference}: {unknown[0].error}")
    held = [t for t, r in zip(targets, remote, strict=True) if r.existence is Existence.PRESENT]
    if not held:
        raise HabanaError(f"{config.repository} holds no image for driver {driver}; build first")
    return module_manifest(
        held, name=name, namespace=namespace, with_firmware=held[0].firmware_url is not None
    )
