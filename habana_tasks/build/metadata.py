"""Resolve every target's inputs once per run, concurrently: each distinct question asked once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from habana_tasks.build.driver_package import (
    CachedPackage,
    DriverSource,
    PackageCache,
    read_driver_source,
    sha256_file,
)
from habana_tasks.build.labels import FINGERPRINT, TargetInputs
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core.errors import HOST, Failure, HabanaError, combined
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage, ResolvedImage
from habana_tasks.verification.signing import Signer

T = TypeVar("T")
# Lookups are small and mostly waiting on the network: 32 in flight hide a distant registry's
# latency behind the CPU the answers cost (measured in docs/benchmarks.md).
LOOKUP_THREADS = 32


@dataclass(frozen=True)
class Resolution:
    """Per target: its inputs or the one-line reason they could not be resolved."""

    inputs: dict[str, TargetInputs | Failure]
    remote: dict[str, RemoteImage]


class _Once:
    """Memoised futures, so N targets sharing a reference cause one lookup."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.futures: dict[object, Future[object]] = {}

    def get(self, key: object, fn: Callable[[], T]) -> Future[T]:
        if key not in self.futures:
            self.futures[key] = self.pool.submit(fn)
        return self.futures[key]  # type: ignore[return-value]


def _outcome(future: Future[T], what: str) -> T | Failure:
    try:
        return future.result()
    except HabanaError as exc:
        return Failure.of("resolve", exc, what)
    except OSError as exc:  # the cache's files: a full disk, a permission
        return Failure("resolve", f"the host failed: {exc}", what, origin=HOST)


def resolve(
    targets: Sequence[BuildTarget],
    registry: RegistryClient,
    packages: PackageCache,
    dockerfile: Path,
    *,
    with_remote: bool = True,
    signer: Signer | None = None,
) -> Resolution:
    dockerfile_sha = sha256_file(dockerfile)
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="lookup") as pool:
        once = _Once(pool)

        def image(ref: str, arch: str) -> Future[ResolvedImage]:
            return once.get(("image", ref, arch), lambda: registry.resolve(ref, arch))

        def package(url: str) -> Future[CachedPackage]:
            return once.get(("package", url), lambda: packages.fetch(url))

        def driver_source(url: str, version: str) -> Future[DriverSource]:
            def read() -> DriverSource:
                cached = package(url).result()
                return read_driver_source(cached.path, version, cached.filename)

            return once.get(("sha", url, version), read)

        def remote_state(image: str) -> Future[RemoteImage]:
            return once.get(("remote", image), lambda: registry.inspect(image, FINGERPRINT))

        pending = {}
        for t in targets:
            pending[t.tag] = (
                image(t.base_image, t.arch) if t.base_image else None,
                image(t.toolkit_image, t.arch),
                package(t.package_url),
                package(t.firmware_url) if t.firmware_url else None,
                driver_source(t.package_url, t.driver),
                remote_state(t.image) if with_remote else None,
            )
        inputs: dict[str, TargetInputs | Failure] = {}
        remote: dict[str, RemoteImage] = {}
        for t in targets:
            base_f, toolkit_f, package_f, firmware_f, sha_f, remote_f = pending[t.tag]
            base: ResolvedImage | Failure | None = None
            if base_f is not None:
                base = _outcome(base_f, f"base image {t.base_image}")
            toolkit = _outcome(toolkit_f, f"toolkit image {t.toolkit_image}")
            pkg = _outcome(package_f, "driver package")
            firmware: CachedPackage | Failure | None = None
            if firmware_f is not None:
                firmware = _outcome(firmware_f, "firmware package")
            # An unreadable package is reported once, not again for its dkms.conf.
            source_or_problem = _outcome(sha_f, "driver package")
            source = pkg if isinstance(pkg, Failure) else source_or_problem
            problems = [v for v in (base, toolkit, pkg, firmware, source) if isinstance(v, Failure)]
            if problems:
                inputs[t.tag] = combined(problems)
            else:
                assert base is None or isinstance(base, ResolvedImage)
                assert isinstance(toolkit, ResolvedImage)
                assert isinstance(pkg, CachedPackage) and isinstance(source, DriverSource)
                assert firmware is None or isinstance(firmware, CachedPackage)
                inputs[t.tag] = TargetInputs(
                    base, toolkit, pkg, firmware, source.git_sha, dockerfile_sha, signer,
                    source.exclusive,
                )  # fmt: skip
            if remote_f is not None:
                state = _outcome(remote_f, f"library image {t.image}")
                remote[t.tag] = (
                    RemoteImage(t.image, Existence.UNKNOWN, failure=state)
                    if isinstance(state, Failure)
                    else state
                )
    return Resolution(inputs, remote)
