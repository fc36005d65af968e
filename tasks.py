"""invoke tasks: argument parsing only; the work is in habana_tasks.cli.commands.

A task imports what it needs when it runs, not when invoke loads this file: `invoke --list`
and a no-op build pay only for what they use. (invoke puts this directory on sys.path.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from habana_tasks.cli import arguments
from habana_tasks.core import local_files
from habana_tasks.core.errors import (
    INTERNAL_ERROR_CODE,
    HabanaError,
    exit_codes_text,
    internal_error,
)

if TYPE_CHECKING:
    from habana_tasks.config.project import Project

ROOT = Path(__file__).resolve().parent
Task = TypeVar("Task", bound=Callable[..., None])


def project() -> Project:
    from habana_tasks.config.project import Project

    return Project(ROOT)


def documented(fn: Task) -> Task:
    """Every task's --help ends with the exit codes scripts can act on."""
    fn.__doc__ = f"{fn.__doc__}\n\n{exit_codes_text()}"
    return fn


def _run(call: Callable[[], int | None]) -> None:
    from habana_tasks.core.process import interruption, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            code = call()
    except HabanaError as exc:
        details = f"\n{exc.details}" if exc.details else ""
        raise Exit(f"error: {exc}{details}", code=exc.exit_code) from None
    except KeyboardInterrupt as exc:
        error = interruption(exc)
        raise Exit(f"{error.word}: every child process was stopped", code=error.exit_code) from None
    except Exception as exc:  # a bug: one line and its own code, never a traceback
        raise Exit(internal_error(exc), code=INTERNAL_ERROR_CODE) from None
    if code:
        raise Exit(code=code)


JOBS_HELP = "targets built at once, {}-{} (default 1)".format(*arguments.JOBS)
BUILD_HELP = {
    "versions": "versions file (default: versions.toml)",
    "force": "rebuild even when the image is up to date (compiled files from the compile cache)",
    "dry-run": "print the plan (target, image, action, reason) and stop",
    "push": "push checked images (default); --no-push only builds and checks",
    "load-test": "boot the target kernel and load the driver before pushing (default); "
    "--no-load-test skips it",
    "retry-failed": "build pairs that failed before with the same inputs (held otherwise)",
    "secure-boot": "with [signing], load-test through a Secure Boot node's boot chain, the "
    "certificate enrolled as a machine-owner key (default); --no-secure-boot boots plainly",
    "compile-cache": "take compiled modules from the compile cache when their inputs match "
    "(default); --no-compile-cache compiles afresh and refreshes the entry",
}


@task(
    help={
        "kernel": "full kernel release (uname -r), as listed in versions.toml",
        "driver": "driver version, e.g. 1.6.0-439 (default: every driver listed for that kernel)",
        **BUILD_HELP,
    }
)
@documented
def build(
    c: Context,
    kernel: str,
    driver: str | None = None,
    versions: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    load_test: bool = True,
    retry_failed: bool = False,
    secure_boot: bool = True,
    compile_cache: bool = True,
) -> None:
    """Build, check, load-test and push the image(s) of one kernel."""
    from habana_tasks.build.service import BuildOptions
    from habana_tasks.cli import commands

    _run(
        lambda: commands.build(
            project(),
            versions,
            arguments.release("--kernel", kernel),
            arguments.optional("--driver", driver, arguments.driver),
            options=BuildOptions(
                force=force,
                dry_run=dry_run,
                push=push,
                load_test=load_test,
                retry_failed=retry_failed,
                secure_boot=secure_boot,
                compile_cache=compile_cache,
            ),
        )
    )


@task(
    help={
        "jobs": JOBS_HELP,
        "only": "only these pairs, by image tag, comma-separated (a batch of `invoke matrix`)",
        **BUILD_HELP,
    }
)
@documented
def build_all(
    c: Context,
    versions: str | None = None,
    jobs: str = "1",
    only: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    push: bool = True,
    load_test: bool = True,
    retry_failed: bool = False,
    secure_boot: bool = True,
    compile_cache: bool = True,
) -> None:
    """Build, check, load-test and push every kernel x driver pair that is missing or stale."""
    from habana_tasks.build.service import BuildOptions
    from habana_tasks.cli import commands

    _run(
        lambda: commands.build(
            project(),
            versions,
            only=arguments.tag_list("--only", only) if only is not None else (),
            options=BuildOptions(
                jobs=arguments.count("--jobs", jobs, arguments.JOBS),
                force=force,
                dry_run=dry_run,
                push=push,
                load_test=load_test,
                retry_failed=retry_failed,
                secure_boot=secure_boot,
                compile_cache=compile_cache,
            ),
        )
    )


@task(
    help={
        "kernel": "full kernel release (default: every kernel in the versions file)",
        "driver": "driver version (default: every driver listed for the kernel)",
        "versions": "versions file (default: versions.toml)",
        "image": "test this image (registry/repository:tag or @digest) instead of the "
        "library's, for one kernel",
        "timeout": "seconds before a guest that has not finished is killed, "
        "{:g}-{:g} (default 120)".format(*arguments.TIMEOUT_SECONDS),
        "secure-boot": "boot as a Secure Boot node: UEFI firmware, shim, GRUB, the library's "
        "certificate enrolled as a machine-owner key (needs [signing])",
        "jobs": "images tested at once (a guest uses one core), {}-{} (default 1)".format(
            *arguments.JOBS
        ),
    }
)
@documented
def load_test(
    c: Context,
    kernel: str | None = None,
    driver: str | None = None,
    versions: str | None = None,
    image: str | None = None,
    timeout: str = "120",
    secure_boot: bool = False,
    jobs: str = "1",
) -> None:
    """Boot each image's exact kernel under qemu and load its driver as KMM does."""
    from habana_tasks.cli import commands

    _run(
        lambda: commands.load_tests(
            project(),
            versions,
            arguments.optional("--kernel", kernel, arguments.release),
            arguments.optional("--driver", driver, arguments.driver),
            image=arguments.optional("--image", image, arguments.image),
            timeout=arguments.seconds("--timeout", timeout, arguments.TIMEOUT_SECONDS),
            secure_boot=secure_boot,
            jobs=arguments.count("--jobs", jobs, arguments.JOBS),
        )
    )


@task(
    help={
        "kernel": "full kernel release (default: every kernel in the versions file)",
        "driver": "driver version (default: every driver listed for the kernel)",
        "versions": "versions file (default: versions.toml)",
    }
)
@documented
def verify_rebuild(
    c: Context, kernel: str | None = None, driver: str | None = None, versions: str | None = None
) -> None:
    """Rebuild published images from their inputs (nothing pushed); name what differs, if any."""
    from habana_tasks.cli import commands

    _run(
        lambda: commands.verify_rebuild(
            project(),
            versions,
            arguments.optional("--kernel", kernel, arguments.release),
            arguments.optional("--driver", driver, arguments.driver),
        )
    )


@task(help={"versions": "versions file naming the kernels (default: the example)"})
@documented
def upstream_up(c: Context, versions: str | None = None) -> None:
    """Start the local upstream (registry, package server) and build its images and RPMs."""
    from devtools import example as example_module

    _run(lambda: example_module.upstream_up(project(), versions))


@task
@documented
def upstream_down(c: Context) -> None:
    """Stop the local upstream's services (their data stays in .cache/upstream)."""
    from devtools import example as example_module

    _run(lambda: example_module.upstream_down(project()))


@task(
    help={
        "jobs": JOBS_HELP,
        "load-test": "load-test each image before pushing (default); --no-load-test skips it",
    }
)
@documented
def example(c: Context, jobs: str = "1", load_test: bool = True) -> None:
    """Build the example library end to end against the local upstream and print it."""
    from devtools import example as example_module

    _run(
        lambda: example_module.example(
            project(),
            jobs=arguments.count("--jobs", jobs, arguments.JOBS),
            load_test=load_test,
        )
    )


@task(
    help={
        "versions": "versions file (default: versions.toml)",
        "format": "table (default), json, or markdown (a catalogue to publish)",
    }
)
@documented
def status(c: Context, versions: str | None = None, format: str = "table") -> None:
    """Every kernel x driver pair: current, stale (why), missing or unknown; unnamed tags."""
    from habana_tasks.cli import commands

    _run(
        lambda: commands.status_command(
            project(),
            versions,
            output_format=arguments.choice("--format", format, arguments.FORMATS),
        )
    )


@task(
    help={
        "kernel": "full kernel release (default: every kernel in the versions file)",
        "driver": "driver version (default: every driver listed for the kernel)",
        "versions": "versions file (default: versions.toml)",
        "image": "verify this image (registry/repository:tag or @digest) instead of the "
        "library's, for one kernel",
        "format": "table (default) or json",
    }
)
@documented
def verify(
    c: Context,
    kernel: str | None = None,
    driver: str | None = None,
    versions: str | None = None,
    image: str | None = None,
    format: str = "table",
) -> None:
    """Verify each image's signature, SBOM and provenance with cosign, then against the image."""
    from habana_tasks.cli import maintenance_commands

    _run(
        lambda: maintenance_commands.verify_command(
            project(),
            versions,
            arguments.optional("--kernel", kernel, arguments.release),
            arguments.optional("--driver", driver, arguments.driver),
            image=arguments.optional("--image", image, arguments.image),
            output_format=arguments.choice("--format", format, ("table", "json")),
        )
    )


@task(
    help={
        "versions": "versions file (default: versions.toml)",
        "format": "policy-json (containers-policy.json, default), registries-d (its "
        "registries.d file), clusterimagepolicy (OpenShift) or kyverno (a ClusterPolicy)",
    }
)
@documented
def trust_policy(c: Context, versions: str | None = None, format: str = "policy-json") -> None:
    """Print what nodes need to admit only the library's signed images ([cosign] public_key)."""
    from habana_tasks.cli import maintenance_commands
    from habana_tasks.trust.policy import FORMATS

    def show() -> int:
        form = arguments.choice("--format", format, FORMATS)
        print(maintenance_commands.trust_policy(project(), versions, form), end="")
        return 0

    _run(show)


@task(
    help={
        "reports": "a report.json, or a folder searched for them (default: .cache/logs)",
    }
)
@documented
def summary(c: Context, reports: str | None = None) -> None:
    """Print several build runs' results (a matrix's batches) as one Markdown summary; the exit
    code is theirs together."""
    from habana_tasks.cli import commands

    def show() -> int:
        text, code = commands.summary(project(), reports)
        print(text, end="")
        return code

    _run(show)


@task(
    help={
        "versions": "versions file (default: versions.toml)",
        "max-jobs": "at most this many jobs, {}-{} (default {}: a GitHub Actions matrix's limit); "
        "pairs of one kernel share a job".format(*arguments.MAX_JOBS, arguments.MAX_JOBS[1]),
        "format": "github (the matrix JSON) or markdown (the plan, for a job summary)",
    }
)
@documented
def matrix(
    c: Context, versions: str | None = None, max_jobs: str = "256", format: str = "github"
) -> None:
    """Print the pending pairs (missing or stale) in batches, as a GitHub Actions matrix."""
    from habana_tasks.cli import commands

    def show() -> None:
        jobs = arguments.count("--max-jobs", max_jobs, arguments.MAX_JOBS)
        chosen = arguments.choice("--format", format, ("github", "markdown"))
        print(commands.matrix(project(), versions, max_jobs=jobs, output_format=chosen))

    _run(show)


@task(
    help={
        "driver": "driver version to map, e.g. 1.6.0-439",
        "versions": "versions file (default: versions.toml)",
        "output": "write the YAML to this file (default: standard output)",
        "name": "Module name, a DNS-1123 label (default habanalabs)",
        "namespace": "Module namespace, a DNS-1123 label (default habana-ai-operator)",
        "sign-key-secret": "KMM signs in the cluster: Secret with the private key (key `key`)",
        "sign-cert-secret": "Secret with the certificate (key `cert`)",
        "signed-repository": "where KMM pushes signed images, registry/repository "
        "(default: <repository>-signed)",
    }
)
@documented
def kmm_module(
    c: Context,
    driver: str,
    versions: str | None = None,
    output: str | None = None,
    name: str = "habanalabs",
    namespace: str = "habana-ai-operator",
    sign_key_secret: str | None = None,
    sign_cert_secret: str | None = None,
    signed_repository: str | None = None,
) -> None:
    """Write a KMM Module whose kernelMappings cover every kernel the library holds."""
    from habana_tasks.cli import commands, maintenance_commands

    def write() -> None:
        target = None if output is None else arguments.output_file("--output", output)
        text = maintenance_commands.kmm_module(
            project(),
            arguments.driver("--driver", driver),
            versions,
            name=arguments.dns_label("--name", name),
            namespace=arguments.dns_label("--namespace", namespace),
            sign_key_secret=arguments.optional(
                "--sign-key-secret", sign_key_secret, arguments.dns_subdomain
            ),
            sign_cert_secret=arguments.optional(
                "--sign-cert-secret", sign_cert_secret, arguments.dns_subdomain
            ),
            signed_repository=arguments.optional(
                "--signed-repository", signed_repository, arguments.repository
            ),
        )
        if target:
            commands.write_output(target, text)
        else:
            print(text, end="")

    _run(write)


@task(
    help={
        "versions": "versions file, for [cache] max_size (default: versions.toml)",
        "stats": "show entries, size, hits and misses (the default)",
        "clear": "remove every entry and the counters",
    }
)
@documented
def cache(
    c: Context, versions: str | None = None, stats: bool = False, clear: bool = False
) -> None:
    """The compile cache: compiled modules kept by what the compile reads (see README)."""
    from habana_tasks.cli import maintenance_commands

    _run(lambda: maintenance_commands.cache_command(project(), versions, clear=clear))


@task(
    help={
        "versions": "versions file (default: versions.toml)",
        "older-than": "only tags whose image is older than this many days, {}-{}".format(
            *arguments.OLDER_THAN_DAYS
        ),
        "apply": "delete what is listed (by digest); without it, only list",
    }
)
@documented
def prune(
    c: Context, versions: str | None = None, older_than: str | None = None, apply: bool = False
) -> None:
    """List, and with --apply delete, tags the matrix no longer names (never a named one)."""
    from habana_tasks.cli import maintenance_commands

    _run(
        lambda: maintenance_commands.prune_command(
            project(),
            versions,
            older_than=None
            if older_than is None
            else arguments.count("--older-than", older_than, arguments.OLDER_THAN_DAYS),
            apply=apply,
        )
    )


@task(
    iterable=["minor", "arch", "driver"],
    help={
        "versions": "versions file to update (default: versions.toml)",
        "minor": "OpenShift minor to scan, e.g. 4.14 (repeatable; default: discover.minors)",
        "arch": "architecture (repeatable; default: discover.arches, else x86_64)",
        "driver": "driver version(s) for new kernels (default: discover.drivers)",
        "release-repository": "release images (default quay.io/openshift-release-dev/ocp-release)",
        "authfile": "pull secret / auth file for the release and toolkit repositories",
        "dry-run": "show the diff of versions.toml instead of writing it",
    },
)
@documented
def discover(
    c: Context,
    versions: str | None = None,
    minor: list[str] | None = None,
    arch: list[str] | None = None,
    driver: list[str] | None = None,
    release_repository: str | None = None,
    authfile: str | None = None,
    dry_run: bool = False,
) -> None:
    """Add the kernels that OpenShift releases ship to versions.toml, comments kept."""
    from habana_tasks.cli import maintenance_commands

    _run(
        lambda: maintenance_commands.discover(
            project(),
            versions,
            minors=arguments.each("--minor", minor or (), arguments.openshift_minor),
            arches=arguments.each("--arch", arch or (), arguments.arch),
            drivers=arguments.each("--driver", driver or (), arguments.driver),
            release_repository=arguments.optional(
                "--release-repository", release_repository, arguments.repository
            ),
            authfile=arguments.optional_file("--authfile", authfile, local_files.AUTH_FILE),
            dry_run=dry_run,
        )
    )


@task(
    iterable=["openshift"],
    help={
        "versions": "versions file (default: versions.toml)",
        "output": "folder to write index.html into (default: site)",
        "openshift": "OpenShift release whose coverage to show, e.g. 4.16.12 (repeatable)",
        "nodes": "JSON of `kubectl get nodes -o json` whose coverage to show",
    },
)
@documented
def site(
    c: Context,
    versions: str | None = None,
    output: str = "site",
    openshift: list[str] | None = None,
    nodes: str | None = None,
) -> None:
    """The library at a glance: a static page of every pair's state (and coverage)."""
    from habana_tasks.cli import maintenance_commands

    _run(
        lambda: maintenance_commands.site_command(
            project(),
            versions,
            output=arguments.output_dir("--output", output),
            openshift=arguments.each("--openshift", openshift or (), arguments.openshift_release),
            nodes=arguments.optional_file("--nodes", nodes, local_files.NODES_JSON),
        )
    )


@task(
    iterable=["openshift", "driver"],
    help={
        "versions": "versions file (default: versions.toml)",
        "openshift": "OpenShift release to check, e.g. 4.16.12 (repeatable)",
        "nodes": "JSON of `kubectl get nodes -o json` (instead of --openshift)",
        "driver": "driver version(s) to check (default: every driver in versions.toml)",
        "arch": "architecture of the releases (default x86_64)",
        "release-repository": "release images (default: discover.release_repository)",
        "authfile": "pull secret / auth file for the release and toolkit repositories",
        "format": "table, json or markdown (for a job summary)",
    },
)
@documented
def preflight(
    c: Context,
    versions: str | None = None,
    openshift: list[str] | None = None,
    nodes: str | None = None,
    driver: list[str] | None = None,
    arch: str = "x86_64",
    release_repository: str | None = None,
    authfile: str | None = None,
    format: str = "table",
) -> None:
    """Before an upgrade: is there a current, load-tested image for every kernel x driver?"""
    from habana_tasks.cli import maintenance_commands

    _run(
        lambda: maintenance_commands.preflight_command(
            project(),
            versions,
            openshift=arguments.each("--openshift", openshift or (), arguments.openshift_release),
            nodes=arguments.optional_file("--nodes", nodes, local_files.NODES_JSON),
            drivers=arguments.each("--driver", driver or (), arguments.driver),
            arch=arguments.arch("--arch", arch),
            release_repository=arguments.optional(
                "--release-repository", release_repository, arguments.repository
            ),
            authfile=arguments.optional_file("--authfile", authfile, local_files.AUTH_FILE),
            output_format=arguments.choice("--format", format, arguments.FORMATS),
        )
    )


@task
@documented
def bench(c: Context) -> None:
    """Measure the pipeline against the per-image way; writes docs/benchmarks.md."""

    def measure() -> None:
        from devtools import benchmarks

        benchmarks.run(project())

    _run(measure)
