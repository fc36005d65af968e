"""Upgrade preflight: will nodes still get a driver after an upgrade? Answered from the registry
alone, before the upgrade: for each OpenShift release (its kernel, through the same release ->
driver-toolkit -> kernel lookup `discover` uses) or each node of a `kubectl get nodes -o json`, and
each driver: is the image there, load-tested, signed (when the library signs), and current?
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from habana_tasks.build import labels
from habana_tasks.build.driver_package import BuildExclusive
from habana_tasks.build.plan import EXCLUDED, NODE_TRUST, Action, BuildJob, replacing_words
from habana_tasks.build.service import PlannedRun
from habana_tasks.config.kernel_release import KNOWN_ARCHES, derive_arch
from habana_tasks.config.tags import image_tag
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core import local_files
from habana_tasks.core.errors import (
    NOT_READY,
    OK,
    UNKNOWN_STATE,
    ConfigError,
    Failure,
    RegistryError,
    UsageError,
)
from habana_tasks.maintenance import discover
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage

DEFAULT_ARCH = "x86_64"  # a release's image read unless told otherwise (Gaudi servers)
# Kubernetes' node architecture names (GOARCH) -> kernel architecture names.
NODE_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class KernelSource:
    """Where a kernel to check comes from: an OpenShift release or a node."""

    origin: str  # "OpenShift 4.16.12 (x86_64)" or "node worker-1"
    kernel: str | None  # None: it could not be resolved (error says why)
    arch: str
    error: str | None = None
    release: str | None = None  # the OpenShift release, e.g. 4.16.12


@dataclass(frozen=True)
class Answer:
    """One kernel x driver: every question answered, and what to do when one is "no"."""

    origin: str
    kernel: str
    driver: str
    image: str
    present: bool
    load_tested: bool
    signed: bool | None  # None: the library does not sign
    current: bool
    ok: bool
    detail: str
    action: str


def release_kernels(
    registry: RegistryClient, repository: str, releases: Sequence[str], arch: str = DEFAULT_ARCH
) -> list[KernelSource]:
    """Each release's kernel, read from its driver-toolkit through the registry API."""
    sources = []
    for version in releases:
        origin = f"OpenShift {version} ({arch})"
        found = discover.read_release(registry, repository, version, arch, f"{version}-{arch}")
        if isinstance(found, Failure):
            sources.append(KernelSource(origin, None, arch, f"cannot resolve: {found}", version))
        else:
            sources.append(KernelSource(origin, found.kernel, arch, release=version))
    return sources


def node_kernels(path: Path) -> list[KernelSource]:
    """`kubectl get nodes -o json`: kernel and architecture of every node."""
    try:
        data = json.loads(local_files.read_text(path, local_files.NODES_JSON))
    except local_files.LocalFileError as exc:
        raise ConfigError([str(exc)]) from exc
    except ValueError as exc:
        raise ConfigError(
            [f"{path}: not JSON ({exc}); expected `kubectl get nodes -o json`"]
        ) from exc
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError([f"{path}: items: expected a non-empty list of nodes"])
    sources, problems = [], []
    for index, node in enumerate(items):
        where = f"{path}: items[{index}]"
        info = _get(node, "status", "nodeInfo")
        name = _get(node, "metadata", "name") or f"#{index}"
        kernel = info.get("kernelVersion") if isinstance(info, dict) else None
        node_arch = info.get("architecture") if isinstance(info, dict) else None
        if not isinstance(kernel, str) or not kernel.strip():
            problems.append(
                f"{where}.status.nodeInfo.kernelVersion = {kernel!r}: expected `uname -r`"
            )
            continue
        arch = NODE_ARCHES.get(str(node_arch)) or derive_arch(kernel)
        if arch is None or arch not in KNOWN_ARCHES:
            problems.append(
                f"{where}.status.nodeInfo.architecture = {node_arch!r}: expected one of "
                f"{', '.join(NODE_ARCHES)}"
            )
            continue
        sources.append(KernelSource(f"node {name}", kernel.strip(), arch))
    if problems:
        raise ConfigError(problems)
    return sources


def _get(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def answer(
    source: KernelSource,
    driver: str,
    config: Config,
    jobs: Mapping[tuple[str, str], BuildJob],
    labels_of: Callable[[str], Mapping[str, str] | None],
    exclusive: BuildExclusive | None = None,
) -> Answer:
    """The answers for one kernel x driver (pure: the plan, the remote labels and the driver
    package's kernel rule are given)."""
    assert source.kernel is not None
    kernel = source.kernel
    job = jobs.get((kernel, driver))
    image = job.target.image if job else f"{config.repository}:{image_tag(driver, kernel)}"
    if job is not None and job.failure is not None and job.failure.step == EXCLUDED:
        return not_for(source, kernel, driver, image, job.reason)
    if job is None and exclusive and (refusal := exclusive.refusal(kernel, source.arch)):
        said = f"driver {driver} is not built for {kernel}: {refusal}"
        return not_for(source, kernel, driver, image, said)
    found = labels_of(image)
    present = found is not None
    image_labels = found or {}
    tested = labels.load_test_boot(image_labels) is not None
    signed = None if config.signing is None else image_labels.get(labels.SIGNING) == "signed"
    current = job is not None and job.action is Action.SKIP
    build = f"invoke build --kernel {kernel} --driver {driver}"
    if job is None:
        detail = "kernel not in versions.toml"
        minor = ".".join((source.release or "").split(".")[:2])
        action = (
            f"invoke discover --minor {minor} --arch {source.arch} --driver {driver} "
            "&& invoke build-all"
            if source.release
            else f'add [[kernels]] release = "{kernel}", drivers = ["{driver}"] to versions.toml, '
            f"then {build}"
        )
    elif job.failure is not None and job.failure.step == NODE_TRUST:
        detail = job.reason
        action = (
            "if the nodes boot with arguments that change this (efi=runtime turns runtime "
            "services on), say so in node_kernel_args; else use a kernel that trusts MOK keys"
        )
    elif job.action is Action.FAIL:
        detail, action = f"cannot tell: {job.reason}", "fix the error above, then run again"
    elif job.action is Action.HOLD:  # failed before with these inputs: a build would again
        detail = job.reason
        action = f"fix the cause (or change an input), then {build} --retry-failed"
    elif not present:
        detail, action = "no image", build
    elif not (current and tested and signed is not False):
        stale = "stale: " + job.reason.removeprefix("stale: ")
        why = [w for w, bad in ((job.reason if job.action is Action.SIGN else stale, not current),
                                ("not load-tested", not tested),
                                ("unsigned", signed is False)) if bad]  # fmt: skip
        detail, action = "; ".join(why), build
    else:
        replaced = labels.in_tree_replaced(image_labels)
        detail, action = f"ready; {replacing_words(replaced)}" if replaced else "ready", ""
    ok = present and tested and current and signed is not False
    return Answer(
        source.origin, kernel, driver, image, present, tested, signed, current, ok, detail, action
    )


NOT_FOR = "not for this kernel: "  # an answer whose driver does not build for the kernel


def not_for(source: KernelSource, kernel: str, driver: str, image: str, why: str) -> Answer:
    """A driver whose package does not build for the kernel (DKMS's BUILD_EXCLUSIVE rules):
    nothing to do for that pair, unless no driver serves the kernel (see served)."""
    return Answer(
        source.origin, kernel, driver, image, False, False, None, False, True, NOT_FOR + why, ""
    )


def served(answers: Sequence[Answer]) -> list[Answer]:
    """A kernel every driver's package refuses gets no driver at all: those answers are "no"."""
    refused = {a.origin for a in answers if a.detail.startswith(NOT_FOR)}
    unserved = refused - {a.origin for a in answers if not a.detail.startswith(NOT_FOR)}
    action = "add a driver whose package builds for this kernel to versions.toml"
    return [replace(a, ok=False, action=action) if a.origin in unserved else a for a in answers]


def to_json(answers: Sequence[Answer], errors: Sequence[str]) -> str:
    return json.dumps(
        {"ok": not errors and all(a.ok for a in answers),
         "answers": [asdict(a) for a in answers], "errors": list(errors)},
        indent=2,
    )  # fmt: skip


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def to_markdown(answers: Sequence[Answer], errors: Sequence[str], repository: str) -> str:
    """For a job summary: one row per kernel x driver, what to do under each "no"."""
    verdict = "ready" if not errors and all(a.ok for a in answers) else "NOT ready"
    lines = [
        f"# Upgrade preflight: {verdict}",
        "",
        f"Library: `{repository}`",
        "",
        "| source | kernel | driver | image | load-tested | signed | current | detail | to do |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in answers:
        lines.append(
            f"| {a.origin} | `{a.kernel}` | {a.driver} | {yes_no(a.present)} | "
            f"{yes_no(a.load_tested)} | {yes_no(a.signed)} | {yes_no(a.current)} | {a.detail} | "
            f"{f'`{a.action}`' if a.action else '-'} |"
        )
    lines += ["", *(f"- error: {e}" for e in errors)] if errors else []
    return "\n".join(lines) + "\n"


def drivers_for(config: Config, wanted: Sequence[str]) -> list[str]:
    known = sorted({t.driver for t in config.targets})
    unknown = [d for d in wanted if d not in known]
    if unknown:
        raise UsageError(
            f"--driver {unknown[0]}: not a driver of {config.path}",
            hint=f"known: {', '.join(known)}",
        )
    return list(wanted) or known


class Planner(Protocol):
    def __call__(self, targets: Sequence[BuildTarget]) -> PlannedRun: ...


def check(
    config: Config,
    sources: Sequence[KernelSource],
    drivers: Sequence[str],
    registry: RegistryClient,
    plan: Planner,
    listed: Collection[str] | None = None,
) -> tuple[list[Answer], list[str], int]:
    """Every answer, every error (a source or image that cannot be told: never a "no"), and the
    registry requests it took. The plan is the build plan: "current" means build-all would skip.
    `listed`: the repository's tags, when just listed (an image not among them is not asked for)."""
    errors = [f"{s.origin}: {s.error}" for s in sources if s.error]
    kernels = {s.kernel for s in sources if s.kernel}
    targets = [t for t in config.targets if t.kernel in kernels and t.driver in drivers]
    # A driver none of these kernels lists is planned once anyway, for its package's kernel rule.
    covered = {t.driver for t in targets}
    probes = {t.driver: t for t in reversed(config.targets) if t.driver not in covered}
    jobs: dict[tuple[str, str], BuildJob] = {}
    exclusive: dict[str, BuildExclusive] = {}
    remote: dict[str, RemoteImage] = {}
    requests = 0
    if targets or probes:
        planned = plan([*targets, *(probes[d] for d in drivers if d in probes)])
        exclusive = {j.target.driver: j.inputs.exclusive for j in planned.jobs if j.inputs}
        jobs = {
            (j.target.kernel, j.target.driver): j
            for j in planned.jobs
            if j.target.kernel in kernels
        }
        remote = {
            j.target.image: planned.remote[j.target.tag]
            for j in planned.jobs
            if j.target.tag in planned.remote
        }
        if planned.registry is not registry:  # a run of its own (not status's, counted below)
            requests += planned.registry.requests_sent

    known = None if listed is None else {f"{config.repository}:{tag}" for tag in listed}

    def labels_of(image: str) -> Mapping[str, str] | None:
        if image not in remote and known is not None and image not in known:
            return None
        found = remote.get(image) or registry.inspect(image)
        if found.existence is Existence.UNKNOWN:
            raise RegistryError(f"{image}: {found.error or 'registry error'}")
        return found.labels if found.existence is Existence.PRESENT else None

    answers = []
    for source in sources:
        for driver in drivers if source.kernel else ():
            try:
                rule = exclusive.get(driver)
                answers.append(answer(source, driver, config, jobs, labels_of, rule))
            except RegistryError as exc:
                errors.append(f"{source.origin}, driver {driver}: cannot tell: {exc}")
    return served(answers), errors, requests + registry.requests_sent


@dataclass(frozen=True)
class PreflightReport:
    """Every answer, every question that could not be answered, and what it took."""

    answers: tuple[Answer, ...]
    problems: tuple[str, ...]
    requests: int
    seconds: float

    @property
    def ready(self) -> bool:
        return not self.problems and all(a.ok for a in self.answers)

    @property
    def exit_code(self) -> int:
        """Unknown outranks "no": an unanswered question is never reported as not ready."""
        if self.problems:
            return UNKNOWN_STATE
        return OK if self.ready else NOT_READY

    @property
    def verdict(self) -> str:
        return (
            f"{'ready' if self.ready else 'NOT ready'}: {len(self.answers)} answer(s) in "
            f"{self.seconds:.2f} s ({self.requests} HTTP requests)"
        )


def run_preflight(
    config: Config,
    registry: RegistryClient,
    plan: Planner,
    *,
    openshift: Sequence[str] = (),
    nodes: Path | None = None,
    drivers: Sequence[str] = (),
    arch: str = DEFAULT_ARCH,
    release_repository: str | None = None,
) -> PreflightReport:
    """The kernels of the given OpenShift releases (or nodes) against the library, per driver."""
    if bool(openshift) == bool(nodes):
        raise UsageError("give the releases (--openshift 4.16.12, repeatable) or --nodes FILE")
    chosen = drivers_for(config, drivers)
    started = time.monotonic()
    if nodes is not None:
        sources = node_kernels(nodes)
    else:
        repository = release_repository or config.discover.release_repository
        sources = release_kernels(registry, repository, openshift, arch)
    answers, problems, requests = check(config, sources, chosen, registry, plan)
    return PreflightReport(tuple(answers), tuple(problems), requests, time.monotonic() - started)


def from_resolved(
    config: Config,
    resolved: PlannedRun,
    sources: Sequence[KernelSource],
    listed: Collection[str] | None,
) -> PreflightReport:
    """Every driver's answer for these kernels from a run already resolved and the tags it
    listed (status's, for the library page): nothing is asked about again."""

    def plan(targets: Sequence[BuildTarget]) -> PlannedRun:
        wanted = {target.tag for target in targets}
        return replace(resolved, jobs=tuple(j for j in resolved.jobs if j.target.tag in wanted))

    started = time.monotonic()
    drivers = drivers_for(config, ())
    answers, problems, requests = check(config, sources, drivers, resolved.registry, plan, listed)
    return PreflightReport(tuple(answers), tuple(problems), requests, time.monotonic() - started)
