"""What a published image's attestations say, gathered from its build: the exported image's
files and modules for the SBOM, the resolved inputs for the provenance. Made once the image
has passed its checks; the SBOM is completed with the digest the push gives."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path

import rpmfile

from habana_tasks.build import failure_records
from habana_tasks.build.driver_package import sha256_file
from habana_tasks.build.labels import TargetInputs
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.process import ProcessRunner
from habana_tasks.trust import cosign, provenance, sbom
from habana_tasks.trust.provenance import Dependency, ProvenanceInputs
from habana_tasks.trust.sbom import ImageFile, ModuleInfo, Package, Pinned, RpmHeader, SbomInputs

TOOL_VERSION = metadata.version("habana-tasks")  # the installed package's own


@dataclass(frozen=True)
class Evidence:
    target: BuildTarget
    inputs: TargetInputs
    config: Config
    files: tuple[ImageFile, ...]
    modules: tuple[ModuleInfo, ...]
    invocation: str
    started: datetime
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    after_build: bool = False  # attested later than the image was built (no rebuild)

    def packages(self) -> tuple[Package, ...]:
        found = [("driver", self.inputs.package)]
        if self.inputs.firmware is not None:
            found.append(("firmware", self.inputs.firmware))
        return tuple(
            Package(
                role,
                package.filename,
                package.sha256,
                package.url,
                self.target.driver,
                self.inputs.git_sha if role == "driver" else "",
                rpm_header(package.path),
            )
            for role, package in found
        )

    def images(self) -> tuple[Pinned, ...]:
        used = [Pinned("toolkit", self.inputs.toolkit.name, self.inputs.toolkit.digest)]
        if self.inputs.base is not None:
            used.append(Pinned("base", self.inputs.base.name, self.inputs.base.digest))
        return tuple(used)

    def sbom(self, digest: str) -> str:
        return sbom.document(
            SbomInputs(
                repository=self.target.repository,
                digest=digest,
                tag=self.target.tag,
                kernel=self.target.kernel,
                files=self.files,
                modules=self.modules,
                packages=self.packages(),
                images=self.images(),
                tool_version=TOOL_VERSION,
                tool_digest=failure_records.tool_digest(),
                owners=self.owners,
            )
        )

    def signing_key(self) -> str:
        """The public key of the key that signs the attestations (none configured: empty)."""
        signing = self.config.image_signing
        return cosign.public_key(signing.public_key) if signing is not None else ""

    def dependencies(self) -> tuple[Dependency, ...]:
        found = [
            Dependency(f"{i.role} image", str(sbom.oci_purl(i.name, i.digest)), _hex(i.digest))
            for i in self.images()
        ]
        found += [
            Dependency(f"{p.role} package {p.filename}", p.url, p.sha256) for p in self.packages()
        ]
        found.append(Dependency("Dockerfile", "Dockerfile", self.inputs.dockerfile_sha256))
        found.append(
            Dependency("habana-tasks", f"pkg:pypi/habana-tasks@{TOOL_VERSION}",
                       _hex(failure_records.tool_digest()))
        )  # fmt: skip
        return tuple(found)

    def provenance(self, finished: datetime | None = None) -> str:
        return provenance.predicate(
            ProvenanceInputs(
                kernel=self.target.kernel,
                driver=self.target.driver,
                tag=self.target.tag,
                repository=self.target.repository,
                source=self.config.source,
                revision=provenance.revision(os.environ),
                versions_file=str(self.config.path),
                versions_sha256=sha256_file(self.config.path),
                dependencies=self.dependencies(),
                tool_version=TOOL_VERSION,
                invocation=self.invocation,
                signing_key=self.signing_key(),
                started=self.started,
                finished=finished or datetime.now(UTC),
                after_build=self.after_build,
            )
        )


@cache
def rpm_header(path: Path) -> RpmHeader | None:
    """What the package's RPM header says it is (its purl's parts); None: not an RPM. Read
    once per file: the package cache's files are named by their content."""
    try:
        with rpmfile.open(str(path)) as rpm:
            said = rpm.headers
    # rpmfile raises bare KeyError, EOFError or lzma errors on a file that is not an RPM: its
    # purl is then the generic one, by checksum.
    except Exception:
        return None

    def text(key: str) -> str:
        value = said.get(key)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")

    if not (text("name") and text("version")):
        return None
    return RpmHeader(
        text("name"), text("version"), text("release"), text("arch"), text("vendor"), text("epoch")
    )


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


def gather(
    runner: ProcessRunner,
    config: Config,
    target: BuildTarget,
    inputs: TargetInputs,
    rootfs_tar: Path,
    work: Path,
    invocation: str,
    started: datetime,
    owners: Mapping[str, tuple[str, str]],
    after_build: bool = False,
) -> Evidence:
    """The evidence of one checked image (its exported root filesystem); `after_build`: of a
    published image attested without rebuilding it (which tool owns each file is not known)."""
    return Evidence(
        target,
        inputs,
        config,
        sbom.image_files(rootfs_tar),
        sbom.module_infos(runner, rootfs_tar, work / "sbom-modules"),
        invocation,
        started,
        owners,
        after_build,
    )
