"""invoke tasks: each lists the options it takes (declared once, in habana_tasks.cli.options)
and hands what was given to the command layer, which does the work.

A task imports what it needs when it runs, not when invoke loads this file: `invoke --list`
and a no-op build pay only for what they use. (invoke puts this directory on sys.path.)
"""

from __future__ import annotations

from pathlib import Path

from habana_tasks.cli import options as o
from habana_tasks.cli.invoke_tasks import tasks_in
from habana_tasks.cli.options import Given

command = tasks_in(Path(__file__).resolve().parent)


@command(o.KERNEL, o.DRIVER_OF_KERNEL, o.VERSIONS, *o.BUILD)
def build(given: Given) -> int:
    """Build, check, load-test and push the image(s) of one kernel."""
    from habana_tasks.cli import commands

    return commands.build(
        given.project, given[o.VERSIONS], given[o.KERNEL], given[o.DRIVER_OF_KERNEL],
        options=o.build_options(given),
    )  # fmt: skip


@command(o.VERSIONS, o.JOBS, o.ONLY, *o.BUILD)
def build_all(given: Given) -> int:
    """Build, check, load-test and push every kernel x driver pair that is missing or stale."""
    from habana_tasks.cli import commands

    return commands.build(
        given.project, given[o.VERSIONS], only=given[o.ONLY],
        options=o.build_options(given, jobs=given[o.JOBS]),
    )  # fmt: skip


@command(
    o.ANY_KERNEL, o.ANY_DRIVER, o.VERSIONS, o.IMAGE_TO_TEST, o.TIMEOUT, o.BOOT_SECURELY, o.GUESTS
)
def load_test(given: Given) -> int:
    """Boot each image's exact kernel under qemu and load its driver as KMM does."""
    from habana_tasks.cli import commands

    return commands.load_tests(
        given.project, given[o.VERSIONS], given[o.ANY_KERNEL], given[o.ANY_DRIVER],
        image=given[o.IMAGE_TO_TEST], timeout=given[o.TIMEOUT],
        secure_boot=given[o.BOOT_SECURELY], jobs=given[o.GUESTS],
    )  # fmt: skip


@command(o.ANY_KERNEL, o.ANY_DRIVER, o.VERSIONS)
def verify_rebuild(given: Given) -> int:
    """Rebuild published images from their inputs (nothing pushed); name what differs, if any."""
    from habana_tasks.cli import commands

    return commands.verify_rebuild(
        given.project, given[o.VERSIONS], given[o.ANY_KERNEL], given[o.ANY_DRIVER]
    )


@command(o.VERSIONS_OF_UPSTREAM)
def upstream_up(given: Given) -> None:
    """Start the local upstream (registry, package server) and build its images and RPMs."""
    from devtools import example

    example.upstream_up(given.project, given[o.VERSIONS_OF_UPSTREAM])


@command()
def upstream_down(given: Given) -> None:
    """Stop the local upstream's services (their data stays in .cache/upstream)."""
    from devtools import example

    example.upstream_down(given.project)


@command(o.JOBS, o.LOAD_TEST_EACH)
def example(given: Given) -> int:
    """Build the example library end to end against the local upstream and print it."""
    from devtools import example

    return example.example(given.project, jobs=given[o.JOBS], load_test=given[o.LOAD_TEST_EACH])


@command(o.VERSIONS, o.FORMAT)
def status(given: Given) -> int:
    """Every kernel x driver pair: current, stale (why), missing or unknown; unnamed tags."""
    from habana_tasks.cli import commands

    return commands.status_command(given.project, given[o.VERSIONS], output_format=given[o.FORMAT])


@command(o.ANY_KERNEL, o.ANY_DRIVER, o.VERSIONS, o.IMAGE_TO_VERIFY, o.VERIFY_FORMAT)
def verify(given: Given) -> int:
    """Verify each image's signature, SBOM and provenance with cosign, then against the image."""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.verify_command(
        given.project, given[o.VERSIONS], given[o.ANY_KERNEL], given[o.ANY_DRIVER],
        image=given[o.IMAGE_TO_VERIFY], output_format=given[o.VERIFY_FORMAT],
    )  # fmt: skip


@command(o.VERSIONS, o.POLICY_FORMAT, o.POLICY_OPENSHIFT)
def trust_policy(given: Given) -> None:
    """Print what nodes need to admit only the library's signed images ([cosign] public_key)."""
    from habana_tasks.cli import maintenance_commands

    text = maintenance_commands.trust_policy(
        given.project, given[o.VERSIONS], given[o.POLICY_FORMAT], given[o.POLICY_OPENSHIFT]
    )
    print(text, end="")


@command(o.REPORTS)
def summary(given: Given) -> int:
    """Print several build runs' results (a matrix's batches) as one Markdown summary; the exit
    code is theirs together."""
    from habana_tasks.cli import commands

    text, code = commands.summary(given.project, given[o.REPORTS])
    print(text, end="")
    return code


@command(o.VERSIONS, o.MAX_JOBS, o.MATRIX_FORMAT)
def matrix(given: Given) -> None:
    """Print the pending pairs (missing or stale) in batches, as a GitHub Actions matrix."""
    from habana_tasks.cli import commands

    print(
        commands.matrix(
            given.project, given[o.VERSIONS], max_jobs=given[o.MAX_JOBS],
            output_format=given[o.MATRIX_FORMAT],
        )
    )  # fmt: skip


@command(
    o.DRIVER_TO_MAP, o.VERSIONS, o.MODULE_FILE, o.MODULE_NAME, o.MODULE_NAMESPACE,
    o.SIGN_KEY_SECRET, o.SIGN_CERT_SECRET, o.SIGNED_REPOSITORY, o.BY_TAG,
)  # fmt: skip
def kmm_module(given: Given) -> None:
    """Write a KMM Module whose kernelMappings cover every kernel the library holds."""
    from habana_tasks.cli import commands, maintenance_commands

    text = maintenance_commands.kmm_module(
        given.project, given[o.DRIVER_TO_MAP], given[o.VERSIONS],
        name=given[o.MODULE_NAME], namespace=given[o.MODULE_NAMESPACE],
        sign_key_secret=given[o.SIGN_KEY_SECRET], sign_cert_secret=given[o.SIGN_CERT_SECRET],
        signed_repository=given[o.SIGNED_REPOSITORY], by_tag=given[o.BY_TAG],
    )  # fmt: skip
    if target := given[o.MODULE_FILE]:
        commands.write_output(target, text)
    else:
        print(text, end="")


@command(o.VERSIONS_FOR_CACHE, o.CACHE_STATS, o.CACHE_CLEAR)
def cache(given: Given) -> int:
    """The compile cache: compiled modules kept by what the compile reads (see README)."""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.cache_command(
        given.project, given[o.VERSIONS_FOR_CACHE], clear=given[o.CACHE_CLEAR]
    )


@command(o.VERSIONS, o.OLDER_THAN, o.APPLY)
def prune(given: Given) -> int:
    """List, and with --apply delete, tags the matrix no longer names (never a named one)."""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.prune_command(
        given.project, given[o.VERSIONS], older_than=given[o.OLDER_THAN], apply=given[o.APPLY]
    )


@command(
    o.VERSIONS_TO_UPDATE, o.MINORS, o.ARCHES, o.DRIVERS_FOR_NEW, o.RELEASES_TO_SCAN, o.AUTHFILE,
    o.SHOW_DIFF,
)  # fmt: skip
def discover(given: Given) -> int:
    """Add the kernels that OpenShift releases ship to versions.toml, comments kept."""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.discover(
        given.project, given[o.VERSIONS_TO_UPDATE], minors=given[o.MINORS],
        arches=given[o.ARCHES], drivers=given[o.DRIVERS_FOR_NEW],
        release_repository=given[o.RELEASES_TO_SCAN], authfile=given[o.AUTHFILE],
        dry_run=given[o.SHOW_DIFF],
    )  # fmt: skip


@command(o.VERSIONS, o.SITE_DIR, o.OPENSHIFT_TO_SHOW, o.NODES_TO_SHOW)
def site(given: Given) -> int:
    """The library at a glance: a static page of every pair's state (and coverage)."""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.site_command(
        given.project, given[o.VERSIONS], output=given[o.SITE_DIR],
        openshift=given[o.OPENSHIFT_TO_SHOW], nodes=given[o.NODES_TO_SHOW],
    )  # fmt: skip


@command(
    o.VERSIONS, o.OPENSHIFT_TO_CHECK, o.NODES_TO_CHECK, o.DRIVERS_TO_CHECK, o.ARCH,
    o.RELEASES_TO_CHECK, o.AUTHFILE, o.PREFLIGHT_FORMAT,
)  # fmt: skip
def preflight(given: Given) -> int:
    """Before an upgrade: is there a current, load-tested image for every kernel x driver?"""
    from habana_tasks.cli import maintenance_commands

    return maintenance_commands.preflight_command(
        given.project, given[o.VERSIONS], openshift=given[o.OPENSHIFT_TO_CHECK],
        nodes=given[o.NODES_TO_CHECK], drivers=given[o.DRIVERS_TO_CHECK], arch=given[o.ARCH],
        release_repository=given[o.RELEASES_TO_CHECK], authfile=given[o.AUTHFILE],
        output_format=given[o.PREFLIGHT_FORMAT],
    )  # fmt: skip


@command()
def bench(given: Given) -> None:
    """Measure the pipeline against the per-image way; writes docs/benchmarks.md."""
    from devtools import benchmarks

    benchmarks.run(given.project)
