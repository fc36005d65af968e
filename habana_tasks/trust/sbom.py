"""The image's CycloneDX 1.6 SBOM, made and validated with cyclonedx-python-lib: every file
in the image (each module with its vermagic, licence and signer; firmware; the tools and
libraries copied in, with the toolkit package each came from), the driver and firmware
packages, the toolkit (and base) by digest, and the tool that built it."""

from __future__ import annotations

import hashlib
import tarfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL

from habana_tasks.core import archive
from habana_tasks.core.errors import HabanaError
from habana_tasks.core.process import ProcessRunner
from habana_tasks.verification.image_checks import parse_modinfo
from habana_tasks.verification.kernel_modules import MODULE_SUFFIXES

PROPERTY = "io.habana-ai-driver:"  # our properties' namespace
MODULES_DIR = "opt/lib/modules/"
FIRMWARE_DIR = "opt/lib/firmware/"


@dataclass(frozen=True)
class ImageFile:
    """One file of the image, as its layers give it (a link: its target, no hash)."""

    path: str  # absolute, as on the node
    sha256: str = ""
    size: int = 0
    link: str = ""
    mode: str = ""  # permission bits, octal ("0755")


@dataclass(frozen=True)
class ModuleInfo:
    """What modinfo says of one module of the image."""

    path: str
    vermagic: str
    licence: str
    signer: str = ""
    signing_key: str = ""
    hash_algorithm: str = ""


@dataclass(frozen=True)
class Package:
    """A vendor package the image was built from."""

    role: str  # "driver" or "firmware"
    filename: str
    sha256: str
    url: str
    version: str
    git_sha: str = ""
    rpm: RpmHeader | None = None  # the package's own header; None: not an RPM


@dataclass(frozen=True)
class RpmHeader:
    """What an RPM's header says it is."""

    name: str
    version: str
    release: str
    arch: str
    vendor: str = ""
    epoch: str = ""


@dataclass(frozen=True)
class Pinned:
    """An image the build used, by digest."""

    role: str  # "toolkit" or "base"
    name: str  # registry/repository
    digest: str


@dataclass(frozen=True)
class SbomInputs:
    repository: str
    digest: str
    tag: str
    kernel: str
    files: tuple[ImageFile, ...]
    modules: tuple[ModuleInfo, ...]
    packages: tuple[Package, ...]
    images: tuple[Pinned, ...]
    tool_version: str
    tool_digest: str
    # Path in the image -> (toolkit package, its version), as the toolkit's package database says.
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def image_files(rootfs_tar: Path) -> tuple[ImageFile, ...]:
    """Every regular file and link of an exported image, hashed, in path order."""
    found = []
    with tarfile.open(rootfs_tar) as tar:
        for member in tar:
            path = "/" + archive.relative_name(member.name)
            mode = f"{member.mode & 0o7777:04o}"
            if member.issym() or member.islnk():
                found.append(ImageFile(path, link=member.linkname, mode=mode))
            elif member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                found.append(ImageFile(path, _sha256_of(handle), member.size, mode=mode))
    return tuple(sorted(found, key=lambda f: f.path))


def _sha256_of(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def module_infos(runner: ProcessRunner, rootfs_tar: Path, workdir: Path) -> tuple[ModuleInfo, ...]:
    """modinfo's account of every module the image carries (extracted into workdir)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(rootfs_tar) as tar:
        wanted = [
            m for m in tar.getmembers()
            if m.isfile() and archive.relative_name(m.name).endswith(MODULE_SUFFIXES)
        ]  # fmt: skip
        archive.extract(tar, workdir, wanted)
    infos = []
    for member in wanted:
        relative = archive.relative_name(member.name)
        said = parse_modinfo(
            runner.run(["modinfo", str(workdir / relative)], keep_output=True).text
        )

        def first(key: str, said: dict[str, list[str]] = said) -> str:
            return (said.get(key) or [""])[0]

        infos.append(
            ModuleInfo(
                "/" + relative,
                first("vermagic"),
                first("license"),
                first("signer"),
                first("sig_key"),
                first("sig_hashalgo"),
            )
        )
    return tuple(sorted(infos, key=lambda m: m.path))


def oci_purl(name: str, digest: str) -> PackageURL:
    """pkg:oci/<last path part>@<digest>?repository_url=<registry/repository>."""
    return PackageURL("oci", None, name.rsplit("/", 1)[-1], digest, {"repository_url": name})


def package_purl(package: Package) -> PackageURL:
    """pkg:rpm/<vendor>/<name>@<version>-<release>?arch=… from the package's own header (purl's
    rpm type: the vendor, lowercased, is the namespace); a file that is not an RPM:
    pkg:generic/<file name>?checksum=sha256:…"""
    qualifiers = {}
    if urlsplit(package.url).scheme in ("http", "https"):
        qualifiers["download_url"] = package.url
    rpm = package.rpm
    if rpm is None:
        qualifiers["checksum"] = f"sha256:{package.sha256}"
        return PackageURL("generic", None, package.filename, None, qualifiers)
    qualifiers["arch"] = rpm.arch
    if rpm.epoch:
        qualifiers["epoch"] = rpm.epoch
    namespace = rpm.vendor.lower() or None
    return PackageURL("rpm", namespace, rpm.name, f"{rpm.version}-{rpm.release}", qualifiers)


def _sha256(value: str) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=value)] if value else []


def _properties(values: Mapping[str, str]) -> list[Property]:
    return [Property(name=PROPERTY + k, value=v) for k, v in values.items() if v]


def _file(file: ImageFile, module: ModuleInfo | None, owner: tuple[str, str] | None) -> Component:
    values = {
        "kind": _kind(file.path, module),
        "link": file.link,
        "mode": file.mode,
        "size": str(file.size or ""),
    }
    if module is not None:
        values |= {
            "vermagic": module.vermagic,
            "signer": module.signer,
            "signing-key": module.signing_key,
            "signature-hash": module.hash_algorithm,
        }
    if owner is not None:
        values |= {"toolkit-package": owner[0], "toolkit-package-version": owner[1]}
    return Component(
        type=ComponentType.FILE,
        name=file.path,
        bom_ref=f"file:{file.path}",
        hashes=_sha256(file.sha256),
        licenses=[DisjunctiveLicense(name=module.licence)] if module and module.licence else [],
        properties=_properties(values),
    )


def _kind(path: str, module: ModuleInfo | None) -> str:
    if module is not None:
        return "kernel module"
    if path.startswith("/" + MODULES_DIR):
        return "module index"
    if path.startswith("/" + FIRMWARE_DIR):
        return "firmware"
    return "tool or library"


def document(inputs: SbomInputs) -> str:
    """The SBOM as CycloneDX 1.6 JSON, checked against the schema (a HabanaError if not)."""
    modules = {m.path: m for m in inputs.modules}
    image = Component(
        type=ComponentType.CONTAINER,
        name=inputs.repository,
        version=inputs.digest,
        bom_ref="image",
        purl=oci_purl(inputs.repository, inputs.digest),
        properties=_properties({"tag": inputs.tag, "kernel": inputs.kernel}),
    )
    parts: list[Component] = [
        _file(f, modules.get(f.path), inputs.owners.get(f.path)) for f in inputs.files
    ]
    parts += [
        Component(
            type=ComponentType.LIBRARY,
            name=p.filename,
            version=p.version,
            bom_ref=f"package:{p.role}",
            purl=package_purl(p),
            hashes=_sha256(p.sha256),
            properties=_properties(
                {"role": f"{p.role} package", "url": p.url, "git-sha": p.git_sha}
            ),
        )
        for p in inputs.packages
    ]
    parts += [
        Component(
            type=ComponentType.CONTAINER,
            name=i.name,
            version=i.digest,
            bom_ref=f"image:{i.role}",
            purl=oci_purl(i.name, i.digest),
            properties=_properties({"role": i.role}),
        )
        for i in inputs.images
    ]
    tool = Component(
        type=ComponentType.APPLICATION,
        name="habana-tasks",
        version=inputs.tool_version,
        bom_ref="tool",
        hashes=_sha256(inputs.tool_digest.removeprefix("sha256:")),
    )
    bom = Bom(components=parts)
    bom.metadata.component = image
    bom.metadata.tools.components.add(tool)
    bom.register_dependency(image, parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's own notes on graph completeness
        text = JsonV1Dot6(bom).output_as_string(indent=2)
    # Imported here: its JSON Schema format checkers take over a second to load, which every
    # command would pay (a dry run, status) though only a signing build makes an SBOM.
    from cyclonedx.validation.json import JsonStrictValidator  # noqa: PLC0415

    if error := JsonStrictValidator(SchemaVersion.V1_6).validate_str(text):
        raise HabanaError(f"the SBOM of {inputs.tag} does not validate as CycloneDX 1.6: {error}")
    return text


def accounted_for(document: Mapping[str, Any], files: Sequence[ImageFile]) -> list[str]:
    """What an SBOM (parsed) does not say of the image's files: each missing or differing
    file, named."""
    components = {c["name"]: c for c in document.get("components", []) if c.get("type") == "file"}
    problems = []
    for file in files:
        if file.path not in components:
            problems.append(f"{file.path}: not in the SBOM")
            continue
        component = components[file.path]
        said = {
            str(p.get("name", "")).removeprefix(PROPERTY): str(p.get("value", ""))
            for p in component.get("properties", [])
        }
        sha256 = next((h["content"] for h in component.get("hashes", [])), "")
        if sha256 != file.sha256:
            problems.append(f"{file.path}: the SBOM says sha256 {sha256 or 'none'}")
        if said.get("link", "") != file.link:
            problems.append(
                f"{file.path}: the SBOM says it links to {said.get('link') or 'nothing'}, "
                f"the image {file.link or 'nothing'}"
            )
        # An SBOM from before modes were recorded says none: its hashes and links still bind.
        if "mode" in said and said["mode"] != file.mode:
            problems.append(
                f"{file.path}: the SBOM says mode {said['mode']}, the image {file.mode}"
            )
    return problems
