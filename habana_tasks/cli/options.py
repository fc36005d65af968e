"""Every task option, declared once: its name, help (with its range and default), what invoke
hands over when it is not given, and the check that turns what was typed into the typed value.
invoke's parser and --help, and the checks made before any request or child process, all read
these declarations; a task only lists the ones it takes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from habana_tasks.cli import arguments
from habana_tasks.config.project import Project
from habana_tasks.core import local_files
from habana_tasks.core.errors import UsageError
from habana_tasks.trust.policy import FORMATS as POLICY_FORMATS

if TYPE_CHECKING:
    from habana_tasks.build.service import BuildOptions

T = TypeVar("T")
Value_co = TypeVar("Value_co", covariant=True)
Check = Callable[[str, Any], T]


@dataclass(frozen=True, eq=False)  # each declaration is its own option, even one of the same name
class Option(Generic[Value_co]):
    name: str  # the parameter's name; the flag is --name with dashes
    help: str
    check: Check[Value_co]  # (flag, what invoke handed over) -> the value, or a UsageError
    default: str | bool | None = None  # what invoke hands over when the option is not given
    required: bool = False
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, given: Any) -> Value_co:
        if self.required and given is None:
            raise UsageError(f"{self.flag} is required: {self.help}")
        return self.check(self.flag, given)


class Given:
    """What a task was given, each value through its option's check, and the project it runs in."""

    def __init__(self, values: Mapping[Option[Any], Any], root: Path) -> None:
        self._values = dict(values)
        self.root = root

    def __getitem__(self, option: Option[T]) -> T:
        value: T = self._values[option]
        return value

    @property
    def project(self) -> Project:
        return Project(self.root)


def _as_given(flag: str, value: T) -> T:
    return value


def _maybe(check: Callable[[str, str], T]) -> Check[T | None]:
    return lambda flag, value: None if value is None else check(flag, value)


def _each(check: Callable[[str, str], str]) -> Check[Sequence[str]]:
    return lambda flag, values: arguments.each(flag, values or (), check)


def _one_of(choices: Sequence[str]) -> Check[str]:
    return lambda flag, value: arguments.choice(flag, value, choices)


def _whole(bounds: tuple[int, int]) -> Check[int]:
    return lambda flag, value: arguments.count(flag, value, bounds)


def _file(kind: local_files.FileKind) -> Check[str | None]:
    return lambda flag, value: arguments.optional_file(flag, value, kind)


def _switch(name: str, help: str, default: bool = False) -> Option[bool]:
    return Option(name, help, _as_given, default)


def _versions(help: str) -> Option[str | None]:
    """The versions file is read (and its errors named) by the command that uses it."""
    return Option("versions", help, _as_given)


def _range(bounds: tuple[float, float]) -> str:
    return "{:g}-{:g}".format(*bounds)


# -- what a task reads ---------------------------------------------------------------------------
VERSIONS = _versions("versions file (default: versions.toml)")
VERSIONS_FOR_CACHE = _versions("versions file, for [cache] max_size (default: versions.toml)")
VERSIONS_TO_UPDATE = _versions("versions file to update (default: versions.toml)")
VERSIONS_OF_UPSTREAM = _versions("versions file naming the kernels (default: the example)")
# Versions files read before the command's own modules load: a bad one is refused at once.
READ_FIRST = (VERSIONS, VERSIONS_FOR_CACHE, VERSIONS_TO_UPDATE)
KERNEL = Option(
    "kernel", "full kernel release (uname -r), as listed in versions.toml",
    arguments.release, required=True,
)  # fmt: skip
ANY_KERNEL = Option(
    "kernel", "full kernel release (default: every kernel in the versions file)",
    _maybe(arguments.release),
)  # fmt: skip
DRIVER_OF_KERNEL = Option(
    "driver", "driver version, e.g. 1.6.0-439 (default: every driver listed for that kernel)",
    _maybe(arguments.driver),
)  # fmt: skip
ANY_DRIVER = Option(
    "driver", "driver version (default: every driver listed for the kernel)",
    _maybe(arguments.driver),
)  # fmt: skip
DRIVER_TO_MAP = Option(
    "driver", "driver version to map, e.g. 1.6.0-439", arguments.driver, required=True
)
DRIVERS_TO_CHECK = Option(
    "driver", "driver version(s) to check (default: every driver in versions.toml)",
    _each(arguments.driver), repeatable=True,
)  # fmt: skip
DRIVERS_FOR_NEW = Option(
    "driver", "driver version(s) for new kernels (default: discover.drivers)",
    _each(arguments.driver), repeatable=True,
)  # fmt: skip
ONLY = Option(
    "only", "only these pairs, by image tag, comma-separated (a batch of `invoke matrix`)",
    lambda flag, value: () if value is None else arguments.tag_list(flag, value),
)  # fmt: skip
IMAGE_TO_TEST = Option(
    "image", "test this image (registry/repository:tag or @digest) instead of the library's, "
    "for one kernel", _maybe(arguments.image),
)  # fmt: skip
IMAGE_TO_VERIFY = Option(
    "image", "verify this image (registry/repository:tag or @digest) instead of the library's, "
    "for one kernel", _maybe(arguments.image),
)  # fmt: skip
REPORTS = Option(
    "reports", "a report.json, or a folder searched for them (default: .cache/logs)", _as_given
)
OPENSHIFT_TO_CHECK = Option(
    "openshift", "OpenShift release to check, e.g. 4.16.12 (repeatable)",
    _each(arguments.openshift_release), repeatable=True,
)  # fmt: skip
OPENSHIFT_TO_SHOW = Option(
    "openshift", "OpenShift release whose coverage to show, e.g. 4.16.12 (repeatable)",
    _each(arguments.openshift_release), repeatable=True,
)  # fmt: skip
NODES_TO_CHECK = Option(
    "nodes", "JSON of `kubectl get nodes -o json` (instead of --openshift)",
    _file(local_files.NODES_JSON),
)  # fmt: skip
NODES_TO_SHOW = Option(
    "nodes", "JSON of `kubectl get nodes -o json` whose coverage to show",
    _file(local_files.NODES_JSON),
)  # fmt: skip
MINORS = Option(
    "minor", "OpenShift minor to scan, e.g. 4.14 (repeatable; default: discover.minors)",
    _each(arguments.openshift_minor), repeatable=True,
)  # fmt: skip
ARCHES = Option(
    "arch", "architecture (repeatable; default: discover.arches, else x86_64)",
    _each(arguments.arch), repeatable=True,
)  # fmt: skip
ARCH = Option("arch", "architecture of the releases (default x86_64)", arguments.arch, "x86_64")
RELEASES_TO_SCAN = Option(
    "release_repository", "release images (default quay.io/openshift-release-dev/ocp-release)",
    _maybe(arguments.repository),
)  # fmt: skip
RELEASES_TO_CHECK = Option(
    "release_repository", "release images (default: discover.release_repository)",
    _maybe(arguments.repository),
)  # fmt: skip
AUTHFILE = Option(
    "authfile", "pull secret / auth file for the release and toolkit repositories",
    _file(local_files.AUTH_FILE),
)  # fmt: skip

# -- how a task works ----------------------------------------------------------------------------
JOBS = Option(
    "jobs", "targets built at once, {}-{} (default 1)".format(*arguments.JOBS),
    _whole(arguments.JOBS), "1",
)  # fmt: skip
GUESTS = Option(
    "jobs", "images tested at once (a guest uses one core), {}-{} (default 1)".format(
        *arguments.JOBS
    ), _whole(arguments.JOBS), "1",
)  # fmt: skip
MAX_JOBS = Option(
    "max_jobs", "at most this many jobs, {}-{} (default {}: a GitHub Actions matrix's limit); "
    "pairs of one kernel share a job".format(*arguments.MAX_JOBS, arguments.MAX_JOBS[1]),
    _whole(arguments.MAX_JOBS), str(arguments.MAX_JOBS[1]),
)  # fmt: skip
TIMEOUT = Option(
    "timeout", "seconds before a guest that has not finished is killed, "
    f"{_range(arguments.TIMEOUT_SECONDS)} (default 120)",
    lambda flag, value: arguments.seconds(flag, value, arguments.TIMEOUT_SECONDS), "120",
)  # fmt: skip
OLDER_THAN = Option(
    "older_than", "only tags whose image is older than this many days, {}-{}".format(
        *arguments.OLDER_THAN_DAYS
    ), _maybe(lambda flag, value: arguments.count(flag, value, arguments.OLDER_THAN_DAYS)),
)  # fmt: skip
FORCE = _switch(
    "force", "rebuild even when the image is up to date (compiled files from the compile cache)"
)
DRY_RUN = _switch("dry_run", "print the plan (target, image, action, reason) and stop")
PUSH = _switch("push", "push checked images (default); --no-push only builds and checks", True)
LOAD_TEST = _switch(
    "load_test", "boot the target kernel and load the driver before pushing (default); "
    "--no-load-test skips it", True,
)  # fmt: skip
LOAD_TEST_EACH = _switch(
    "load_test", "load-test each image before pushing (default); --no-load-test skips it", True
)
RETRY_FAILED = _switch(
    "retry_failed", "build pairs that failed before with the same inputs (held otherwise)"
)
SECURE_BOOT = _switch(
    "secure_boot", "with [signing], load-test through a Secure Boot node's boot chain, the "
    "certificate enrolled as a machine-owner key (default); --no-secure-boot boots plainly", True,
)  # fmt: skip
BOOT_SECURELY = _switch(
    "secure_boot", "boot as a Secure Boot node: UEFI firmware, shim, GRUB, the library's "
    "certificate enrolled as a machine-owner key (needs [signing])",
)  # fmt: skip
COMPILE_CACHE = _switch(
    "compile_cache", "take compiled modules from the compile cache when their inputs match "
    "(default); --no-compile-cache compiles afresh and refreshes the entry", True,
)  # fmt: skip
BUILD = (FORCE, DRY_RUN, PUSH, LOAD_TEST, RETRY_FAILED, SECURE_BOOT, COMPILE_CACHE)
CACHE_STATS = _switch("stats", "show entries, size, hits and misses (the default)")
CACHE_CLEAR = _switch("clear", "remove every entry and the counters")
APPLY = _switch("apply", "delete what is listed (by digest); without it, only list")
SHOW_DIFF = _switch("dry_run", "show the diff of versions.toml instead of writing it")

# -- what a task writes --------------------------------------------------------------------------
FORMAT = Option(
    "format", "table (default), json, or markdown (a catalogue to publish)",
    _one_of(arguments.FORMATS), "table",
)  # fmt: skip
PREFLIGHT_FORMAT = Option(
    "format", "table, json or markdown (for a job summary)", _one_of(arguments.FORMATS), "table"
)
VERIFY_FORMAT = Option("format", "table (default) or json", _one_of(("table", "json")), "table")
MATRIX_FORMAT = Option(
    "format", "github (the matrix JSON) or markdown (the plan, for a job summary)",
    _one_of(("github", "markdown")), "github",
)  # fmt: skip
POLICY_OPENSHIFT = Option(
    "openshift", "OpenShift minor the clusterimagepolicy is for, e.g. 4.18 (v1alpha1 on 4.16-4.19; "
    "default: v1, as 4.20 and later serve)", _maybe(arguments.openshift_minor),
)  # fmt: skip
POLICY_FORMAT = Option(
    "format", "policy-json (containers-policy.json, default), registries-d (its registries.d "
    "file), clusterimagepolicy (OpenShift) or kyverno (a ClusterPolicy)",
    _one_of(POLICY_FORMATS), "policy-json",
)  # fmt: skip
MODULE_FILE = Option(
    "output", "write the YAML to this file (default: standard output)",
    _maybe(arguments.output_file),
)  # fmt: skip
SITE_DIR = Option(
    "output", "folder to write index.html into (default: site)", arguments.output_dir, "site"
)
MODULE_NAME = Option(
    "name", "Module name, a DNS-1123 label (default habanalabs)", arguments.dns_label,
    "habanalabs",
)  # fmt: skip
MODULE_NAMESPACE = Option(
    "namespace", "Module namespace, a DNS-1123 label (default habana-ai-operator)",
    arguments.dns_label, "habana-ai-operator",
)  # fmt: skip
SIGN_KEY_SECRET = Option(
    "sign_key_secret", "KMM signs in the cluster: Secret with the private key (key `key`)",
    _maybe(arguments.dns_subdomain),
)  # fmt: skip
SIGN_CERT_SECRET = Option(
    "sign_cert_secret", "Secret with the certificate (key `cert`)", _maybe(arguments.dns_subdomain)
)
SIGNED_REPOSITORY = Option(
    "signed_repository", "where KMM pushes signed images, registry/repository "
    "(default: <repository>-signed)", _maybe(arguments.repository),
)  # fmt: skip
BY_TAG = _switch(
    "by_tag",
    "map each kernel to its image's tag, as the registry resolves it when a node "
    "pulls (weaker: a tag moved later changes what nodes load); default: the digest verified now",
)


def build_options(given: Given, jobs: int = 1) -> BuildOptions:
    """The BUILD switches as the pipeline takes them."""
    # The pipeline's modules load only when a task builds (`invoke --list` stays cheap).
    from habana_tasks.build.service import BuildOptions  # noqa: PLC0415

    return BuildOptions(
        jobs=jobs,
        force=given[FORCE],
        dry_run=given[DRY_RUN],
        push=given[PUSH],
        load_test=given[LOAD_TEST],
        retry_failed=given[RETRY_FAILED],
        secure_boot=given[SECURE_BOOT],
        compile_cache=given[COMPILE_CACHE],
    )
