"""One image made from its job: the build context, the compiled files (build/compile.py: from
the compile cache, or compiled now) and the image assembled from them with the flavour's tools.

Every podman build here runs every step fresh: podman's layer cache is keyed on neither the
labels nor the timestamp, so a step taken from it could carry another build's parent ID
(history's "FROM <id>") or time. What is worth keeping between builds is the compile's output,
and the compile cache keeps exactly that, keyed by what the compile reads; assembling from its
files gives the image a fresh compile gives, byte for byte.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from habana_tasks.build import compile as compiling
from habana_tasks.build import labels
from habana_tasks.build.compile import CompileRecord, CompileSettings
from habana_tasks.build.driver_package import link_into
from habana_tasks.build.plan import BuildJob
from habana_tasks.config.targets import Config
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import BuildSpec, Podman
from habana_tasks.verification import signing


@dataclass(frozen=True)
class ImageOptions:
    """What, besides the job, makes the image: the same values give the same digest."""

    dockerfile: Path
    source_date_epoch: int
    load_tested: str  # the claim written in the load-tested label: the boot, or "false"
    compiling: CompileSettings = field(default_factory=CompileSettings)


# What the tools stage prints for each file it copies from the toolkit: the file's path in the
# image, then the toolkit package that installed it and its version ("- -": none known).
TOOL_FILE = re.compile(r"^TOOL-FILE (/\S+) (\S+) (\S+)$")


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    compiled: CompileRecord
    # Path in the image -> (toolkit package, version), for the tools and libraries copied in.
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def build_image(
    podman: Podman,
    config: Config,
    job: BuildJob,
    work: Path,
    options: ImageOptions,
    on_line: LineSink | None = None,
) -> BuiltImage:
    """The build context made afresh under `work`, the compiled files got for it, and the image
    assembled: the same job and options always give the same image."""
    target, inputs = job.target, job.inputs
    assert inputs is not None
    if work.exists():
        shutil.rmtree(work)
    context = work / "context"
    context.mkdir(parents=True)
    shutil.copyfile(options.dockerfile, context / "Dockerfile")
    link_into(inputs.package, context / "packages", "habanalabs.rpm")
    if inputs.firmware:
        link_into(inputs.firmware, context / "packages", "habanalabs-firmware.rpm")
    # The certificate is public and goes in the context; the key goes in as a secret, to the
    # compile only.
    (context / "signing").mkdir()
    secrets = {}
    if inputs.signer:
        (context / "signing" / "certificate").write_bytes(inputs.signer.certificate_pem)
        secrets[signing.SECRET_ID] = inputs.signer.files.key
    spec = BuildSpec(
        context=context,
        containerfile=context / "Dockerfile",
        iidfile=work / "image-id",
        build_args=labels.build_args(target, inputs),
        timestamp=options.source_date_epoch,
        no_cache=True,
        secrets=secrets,
    )
    cache = options.compiling.cache
    key = None
    if cache is not None:
        dockerfile = (context / "Dockerfile").read_text()
        content = compiling.toolkit_content(podman, spec, dockerfile, cache, on_line)
        recipe = compiling.recipe_digest(dockerfile)
        key = compiling.compile_key(target, inputs, content, recipe)
    assembled = context / compiling.COMPILED_DIR
    record = compiling.compiled_files(podman, options.compiling, spec, key, assembled, on_line)
    image_labels = labels.image_labels(
        config, target, inputs, labels.rfc3339(options.source_date_epoch), options.load_tested
    )
    spec = replace(
        spec,
        labels=image_labels,
        annotations=labels.image_annotations(image_labels),
        secrets={},
    )
    owners: dict[str, tuple[str, str]] = {}

    def listen(line: str) -> None:
        if (match := TOOL_FILE.match(line)) and match[2] != "-":
            owners[match[1]] = (match[2], match[3])
        if on_line is not None:
            on_line(line)

    return BuiltImage(podman.build(spec, listen), record, owners)
