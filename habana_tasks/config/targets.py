"""What a versions file becomes: frozen records of the targets to maintain, the discover
settings and the signing files; selection by kernel and driver with a hint for a miss."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from habana_tasks.config import flavours
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import UsageError


@dataclass(frozen=True)
class SigningFiles:
    """Where the module signing certificate (X.509, DER or PEM) and private key (PEM) are.
    Only paths: the key's content is read by sign-file inside the build, as a podman secret."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class ImageSigning:
    """[cosign]: the key cosign signs images with (never the module key of [signing]), its
    public key, and where the key's password is (else COSIGN_PASSWORD). `key` is what cosign
    is given: a file's path, or a KMS URI passed through untouched (`key_file` None)."""

    key: str
    key_file: Path | None
    public_key: Path
    password_file: Path | None = None

    @property
    def reference(self) -> str:
        """What cosign is given: the key file's path (resolved against the versions file, not
        the working directory), or the KMS URI as written."""
        return str(self.key_file) if self.key_file is not None else self.key


@dataclass(frozen=True)
class BuildTarget:
    """One image to maintain: one driver version for one kernel release."""

    kernel: str
    arch: str
    rhel_version: str | None
    driver: str
    modules: tuple[str, ...]
    base_image: str | None  # None: the image starts from scratch
    toolkit_image: str
    package_url: str
    firmware_url: str | None
    repository: str
    tag: str
    openshift: tuple[str, ...] = ()
    flavour: str = flavours.DEFAULT
    # What the nodes boot this kernel with ([[kernels]] node_kernel_args); the load test too.
    node_kernel_args: tuple[str, ...] = ()

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class DiscoverSettings:
    """Where `invoke discover` looks for OpenShift releases and what it adds for new kernels."""

    release_repository: str = "quay.io/openshift-release-dev/ocp-release"
    minors: tuple[str, ...] = ()
    arches: tuple[str, ...] = ("x86_64",)
    drivers: tuple[str, ...] = ()
    rt: bool = False


@dataclass(frozen=True)
class CacheSettings:
    """[cache]: how large the compile cache may grow before its least recently used entries go."""

    max_size: int = 10 * 1024**3


@dataclass(frozen=True)
class Config:
    path: Path
    repository: str
    source: str
    vendor: str
    insecure_registries: frozenset[str]
    targets: tuple[BuildTarget, ...] = field(default=())
    discover: DiscoverSettings = field(default_factory=DiscoverSettings)
    signing: SigningFiles | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    image_signing: ImageSigning | None = None

    def tls_verify(self, image: str) -> bool:
        """Whether podman must verify TLS for this image's registry (not an insecure mirror)."""
        return ImageReference.parse(image).registry not in self.insecure_registries

    @property
    def named_tags(self) -> frozenset[str]:
        return frozenset(t.tag for t in self.targets)

    def select(
        self, kernel: str | None = None, driver: str | None = None
    ) -> tuple[BuildTarget, ...]:
        """Targets for a kernel and/or driver; a name the file does not hold is a usage error."""
        chosen = tuple(
            t
            for t in self.targets
            if (kernel is None or t.kernel == kernel) and (driver is None or t.driver == driver)
        )
        if not chosen:
            raise UsageError(
                f"{self.path}: no kernels entry with {self._wanted(kernel, driver)}",
                hint=self._hint(kernel, driver),
            )
        return chosen

    def only(self, tags: Sequence[str]) -> tuple[BuildTarget, ...]:
        """The targets with these image tags (a matrix batch); a tag the file does not name is
        a usage error, so a batch planned from another versions file never builds by halves."""
        by_tag = {t.tag: t for t in self.targets}
        unknown = [tag for tag in tags if tag not in by_tag]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(by_tag), n=1)
            raise UsageError(
                f"--only {unknown[0]!r}: expected the tag of a pair {self.path} lists"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                hint=f"did you mean {close[0]!r}?" if close else "`invoke matrix` lists them",
            )
        wanted = set(tags)
        return tuple(t for t in self.targets if t.tag in wanted)

    @staticmethod
    def _wanted(kernel: str | None, driver: str | None) -> str:
        given = (("kernel", kernel), ("driver", driver))
        return " and ".join(f"{k} {v!r}" for k, v in given if v is not None)

    def _hint(self, kernel: str | None, driver: str | None) -> str:
        """Points at what the file does hold: the kernel's drivers when the kernel is listed,
        the drivers of any kernel when only a driver was named, else the closest kernel."""
        kernels = sorted({t.kernel for t in self.targets})
        if kernel is not None and kernel in kernels:
            listed = [t.driver for t in self.targets if t.kernel == kernel]
            return f"drivers listed for {kernel}: {', '.join(listed)}"
        if kernel is None:
            listed = sorted({t.driver for t in self.targets})
            return f"drivers listed: {', '.join(listed)}"
        close = difflib.get_close_matches(kernel, kernels, n=1)
        return f"did you mean {close[0]!r}?" if close else f"known kernels: {', '.join(kernels)}"
