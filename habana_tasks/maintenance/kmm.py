"""A KMM `Module` for one driver version, mapping exactly the kernels the library holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from habana_tasks.build import labels
from habana_tasks.config import flavours
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import HabanaError, UsageError
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage

API_VERSION = "kmm.sigs.x-k8s.io/v1beta1"
FLAVOUR_ANNOTATION = "habana-ai-driver.io/image-flavour"
# The kernel arguments the images were load-tested with, per kernel: the nodes need them too.
KERNEL_ARGS_ANNOTATION = "habana-ai-driver.io/node-kernel-args"
# Nodes with a Habana device (PCI vendor 0x1da3), as labelled by Node Feature Discovery.
NODE_SELECTOR = {"feature.node.kubernetes.io/pci-1da3.present": "true"}
# The images held, each with what the registry said of its tag -> per tag, the reference the
# nodes pull (repository@digest once verified): given by the command, which owns verification.
Pinner = Callable[[Sequence[tuple[BuildTarget, RemoteImage]]], Mapping[str, str]]


@dataclass(frozen=True)
class KmmSigning:
    """KMM signs in the cluster: the Secrets holding the key (`key`) and certificate (`cert`),
    and the repository it pushes the signed images to (same tag as the unsigned one)."""

    key_secret: str
    cert_secret: str
    signed_repository: str


def signing_request(
    config: Config,
    key_secret: str | None,
    cert_secret: str | None,
    signed_repository: str | None,
) -> KmmSigning | None:
    """The in-cluster signing the options ask for (both Secrets, or neither), checked before
    any request; None without them."""
    if bool(key_secret) != bool(cert_secret):
        raise UsageError("--sign-key-secret and --sign-cert-secret go together: give both")
    if signed_repository and not key_secret:
        raise UsageError("--signed-repository needs --sign-key-secret and --sign-cert-secret")
    if not (key_secret and cert_secret):
        return None
    repository = signed_repository or f"{config.repository}-signed"
    if repository == config.repository:
        raise UsageError(
            f"--signed-repository {repository!r}: KMM pushes the signed images there; it "
            "must differ from the library's repository, which holds the unsigned ones"
        )
    return KmmSigning(key_secret, cert_secret, repository)


def files_to_sign(target: BuildTarget) -> list[str]:
    """Every module path in the image (under dirName), as KMM's filesToSign wants them."""
    return [f"{flavours.DIR_NAME}/lib/modules/{target.kernel}/extra/{m}.ko" for m in target.modules]


def kernel_mapping(
    target: BuildTarget,
    sign: KmmSigning | None,
    replaced: Sequence[str] = (),
    reference: str | None = None,
) -> dict[str, Any]:
    """One kernel's mapping; `replaced`: the kernel's own modules its image replaces, which
    KMM removes before loading the image's (in the field the image's flavour's KMM has);
    `reference`: what the nodes pull (repository@digest), else the image's tag. KMM pushes the
    image it signs in the cluster: that one is named by tag."""
    pulled = reference or target.image
    mapping: dict[str, Any] = {"literal": target.kernel, "containerImage": pulled}
    if sign is not None:
        mapping["containerImage"] = f"{sign.signed_repository}:{target.tag}"
        mapping["sign"] = {
            "unsignedImage": pulled,
            "keySecret": {"name": sign.key_secret},
            "certSecret": {"name": sign.cert_secret},
            "filesToSign": files_to_sign(target),
        }
    # The flavour made for KMM 1.x, whose Module removes at most one in-tree module.
    if replaced and target.flavour == flavours.KMM1.name:
        if len(replaced) > 1:
            raise HabanaError(
                f"{target.kernel} ships {', '.join(replaced)}, which its image replaces; KMM 1.x "
                "removes one in-tree module (inTreeModuleToRemove): use the minimal flavour "
                "with KMM 2.x"
            )
        mapping["inTreeModuleToRemove"] = replaced[0]
    elif replaced:
        mapping["inTreeModulesToRemove"] = list(replaced)
    return mapping


def loading_order(modules: Sequence[str]) -> list[str]:
    """`modules` is in load order; the CRD's modulesLoadingOrder is the reverse: "upmost module,
    then the module it depends on", and KMM loads it from the last element to the first, with
    moduleName equal to the first element. So independent modules load in their declared order."""
    return list(reversed(modules))


def node_kernel_args(targets: Sequence[BuildTarget]) -> dict[str, tuple[str, ...]]:
    """The kernels whose nodes must boot with arguments, and those arguments."""
    return {
        t.kernel: t.node_kernel_args
        for t in sorted(targets, key=lambda t: t.kernel)
        if t.node_kernel_args
    }


def kernel_args_text(needed: dict[str, tuple[str, ...]]) -> str:
    """`kernel: arg arg; kernel: arg`, as the annotation and the note say it."""
    return "; ".join(f"{kernel}: {' '.join(args)}" for kernel, args in needed.items())


def machine_config_note(targets: Sequence[BuildTarget]) -> str:
    """YAML comment lines saying how OpenShift nodes get the kernel arguments the images were
    load-tested with (a MachineConfig's kernelArguments); empty when none are needed."""
    needed = node_kernel_args(targets)
    if not needed:
        return ""
    arguments = sorted({a for args in needed.values() for a in args})
    lines = [
        "The nodes of these kernels must boot with these kernel arguments, as the images'",
        "load test did: " + kernel_args_text(needed),
        "On OpenShift, a MachineConfig for the pool of those nodes gives them, e.g.:",
        "  apiVersion: machineconfiguration.openshift.io/v1",
        "  kind: MachineConfig",
        "  metadata:",
        "    name: 99-habana-ai-driver-kernel-args",
        "    labels: {machineconfiguration.openshift.io/role: worker}",
        f"  spec: {{kernelArguments: [{', '.join(arguments)}]}}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def module_manifest(
    targets: Sequence[BuildTarget],
    *,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
    with_firmware: bool = False,
    sign: KmmSigning | None = None,
    replaced: Mapping[str, Sequence[str]] | None = None,
    references: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Literal kernelMappings, one per target, each naming its exact image (`references`: per
    tag, the pinned reference; else the tag); `replaced`: per kernel, the kernel's own modules
    its image replaces."""
    replaced = replaced or {}
    references = references or {}
    if not targets:
        raise ValueError("no images to map")
    order = loading_order(targets[0].modules)
    modprobe: dict[str, Any] = {"moduleName": order[0], "dirName": flavours.DIR_NAME}
    if len(order) > 1:
        modprobe["modulesLoadingOrder"] = order
    if with_firmware:
        modprobe["firmwarePath"] = flavours.FIRMWARE_PATH
    mappings = [
        kernel_mapping(t, sign, replaced.get(t.kernel, ()), references.get(t.tag))
        for t in sorted(targets, key=lambda t: t.kernel)
    ]
    annotations = {FLAVOUR_ANNOTATION: targets[0].flavour}
    if node_args := node_kernel_args(targets):
        annotations[KERNEL_ARGS_ANNOTATION] = kernel_args_text(node_args)
    return {
        "apiVersion": API_VERSION,
        "kind": "Module",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # Which KMM can load these images (README, "Image flavours"), and what the nodes
            # must boot with (README, "Secure Boot refusals").
            "annotations": annotations,
        },
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
    sign: KmmSigning | None = None,
    pin: Pinner | None = None,
) -> tuple[dict[str, Any], tuple[BuildTarget, ...]]:
    """The Module for one driver, mapping every kernel whose image the repository holds (each
    by the reference `pin` gives it, else by tag); and the targets it maps."""
    targets = config.select(driver=driver)
    with ThreadPoolExecutor(16) as pool:
        remote = list(pool.map(lambda t: registry.inspect(t.image, labels.FINGERPRINT), targets))
    unknown = [r for r in remote if r.existence is Existence.UNKNOWN]
    if unknown:
        raise HabanaError(f"{unknown[0].reference}: {unknown[0].error}")
    present = [
        (t, r) for t, r in zip(targets, remote, strict=True) if r.existence is Existence.PRESENT
    ]
    if not present:
        raise HabanaError(f"{config.repository} holds no image for driver {driver}; build first")
    signed = [(t.image, r.labels) for t, r in present if r.labels.get(labels.SIGNING) == "signed"]
    if sign is not None and signed:
        image, found = signed[0]
        raise UsageError(
            f"{image} is already signed (by {found.get(labels.SIGNER, 'an unnamed signer')!r}); "
            "KMM's sign flow is for unsigned images: drop --sign-key-secret/--sign-cert-secret"
        )
    held = tuple(t for t, _ in present)
    references = pin(present) if pin is not None else {}
    replaced = {t.kernel: names for t, r in present if (names := labels.in_tree_replaced(r.labels))}
    module = module_manifest(
        held,
        name=name,
        namespace=namespace,
        with_firmware=held[0].firmware_url is not None,
        sign=sign,
        replaced=replaced,
        references=references,
    )
    return module, held
