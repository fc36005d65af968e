"""One kernel x driver pair's resolved inputs, as the unit tests share them (the plan, the
compile key, preflight, the tables), and each input the README names changed alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from habana_tasks.build.driver_package import CachedPackage
from habana_tasks.build.labels import TargetInputs
from habana_tasks.config.targets import BuildTarget, Config, SigningFiles
from habana_tasks.registry.client import ResolvedImage
from habana_tasks.verification.signing import Signer

TARGET = BuildTarget(
    kernel="6.1.0-56-amd64",
    arch="x86_64",
    rhel_version=None,
    driver="6.1.0-1",
    modules=("habanalabs",),
    base_image="r.example/base:12",
    toolkit_image="r.example/dtk:6.1.0-56-amd64",
    package_url="https://user:secret@vault.example/habanalabs-6.1.0-1.el8.noarch.rpm?token=t",
    firmware_url=None,
    repository="r.example/lib/drv",
    tag="6.1.0-1-6.1.0-56-amd64",
)
D = "sha256:" + "a" * 64
BASE = ResolvedImage("r.example/base:12", "r.example/base", D, None)
INPUTS = TargetInputs(
    base=BASE,
    toolkit=ResolvedImage(TARGET.toolkit_image, "r.example/dtk", "sha256:" + "b" * 64, None),
    package=CachedPackage(TARGET.package_url, Path("/cache/x"), "c" * 64, 10),
    firmware=None,
    git_sha="0123456789abcdef0123456789abcdef01234567",
    dockerfile_sha256="d" * 64,
)
CONFIG = Config(Path("v.toml"), "r.example/lib/drv", "https://src", "", frozenset(), (TARGET,))


SIGNER = Signer(
    SigningFiles(Path("c.der"), Path("k.pem")), "5" * 64, "Signer", "ab" * 20, b"-----BEGIN"
)
# Each input the README names as part of "up to date", changed alone, with the name the plan
# gives it. Written out here rather than read from the product's own list of inputs.
ONE_INPUT_CHANGED = {
    "base image digest": (TARGET, replace(INPUTS, base=replace(BASE, digest=D[:-1] + "0"))),
    "toolkit image digest": (
        TARGET,
        replace(INPUTS, toolkit=replace(INPUTS.toolkit, digest="sha256:" + "0" * 64)),
    ),
    "driver package": (TARGET, replace(INPUTS, package=replace(INPUTS.package, sha256="0" * 64))),
    "firmware package": (
        TARGET,
        replace(
            INPUTS, firmware=CachedPackage("https://v.example/fw.rpm", Path("/f"), "7" * 64, 1)
        ),
    ),
    "driver git SHA": (TARGET, replace(INPUTS, git_sha="f" * 40)),
    "Dockerfile": (TARGET, replace(INPUTS, dockerfile_sha256="0" * 64)),
    "modules": (replace(TARGET, modules=("habanalabs", "habanalabs_cn")), INPUTS),
    "signing certificate": (TARGET, replace(INPUTS, signer=SIGNER)),
    "image flavour": (replace(TARGET, flavour="kmm1"), INPUTS),
    "node kernel arguments": (replace(TARGET, node_kernel_args=("efi=runtime",)), INPUTS),
}
