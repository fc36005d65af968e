"""The driver compiled once per compile input: the key made from exactly what the compile reads,
the compile itself (the Dockerfile's `compiled` stage) only when the compile cache has no entry
for that key, and the compiled files handed to the image's assembly.

The key holds the kernel release; what the compile reads from the toolkit (the kernel's build
tree and the toolchain, digested inside the toolkit by the `compile-inputs` stage, so a toolkit
rebuilt with the same kernel and compiler still hits); the driver and firmware packages' sha256,
the driver's version and git SHA, the module list; the text of the stages that compile; and the
module-signing certificate when modules are signed. Nothing else (flavour, base, labels, the
final stage, this tool's revision) is in it: changing those assembles the image again, from the
same compiled files, and compiles nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from habana_tasks.build.compile_cache import FILES, CompileCache, CompileKey
from habana_tasks.build.labels import TargetInputs
from habana_tasks.config.targets import BuildTarget
from habana_tasks.core import archive
from habana_tasks.core.errors import CheckError, HabanaError
from habana_tasks.core.process import LineSink
from habana_tasks.engine.podman import BuildSpec, Podman

INPUTS_STAGE = "compile-inputs"
COMPILED_STAGE = "compiled"
RECIPE_STAGES = (INPUTS_STAGE, "builder", COMPILED_STAGE)
INPUTS_MARK = re.compile(r"^COMPILE-INPUTS ([0-9a-f]{64}) ([0-9]+) files$")
COMPILED_DIR = "compiled"  # under / in the compiled stage; in the assembly's build context
FROM_LINE = re.compile(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class CompileSettings:
    """Where compiled files come from: the cache (None: compiled afresh and kept nowhere, as
    verify-rebuild proves a published digest) and whether to compile afresh anyway and refresh
    the entry (--no-compile-cache)."""

    cache: CompileCache | None = None
    refresh: bool = False


@dataclass(frozen=True)
class CompileRecord:
    """What a build did about compiling, for its log and report.json."""

    cache: str  # HIT, MISS, REFRESHED or NOT_USED
    note: str
    key: str = ""  # the key's digest ("" when the cache is not used)
    inputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # spent getting the compiled files (compiling, or reading the entry)


HIT, MISS, REFRESHED, NOT_USED = "hit", "miss", "refreshed", "not used"


def stages(dockerfile: str) -> dict[str, str]:
    """The Dockerfile's named stages' text, comments and blank lines dropped; "" is what comes
    before the first FROM (the global ARGs)."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in dockerfile.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := FROM_LINE.match(line.strip()):
            current = match.group(1) or f"#{len(found)}"
            found[current] = []
        found[current].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def recipe_digest(dockerfile: str, names: tuple[str, ...] = RECIPE_STAGES) -> str:
    """The digest of what compiles: the global ARGs and the compile's stages."""
    parts = stages(dockerfile)
    missing = [name for name in names if name not in parts]
    if missing:
        raise HabanaError(f"the Dockerfile has no stage named {', '.join(missing)}")
    text = "\n".join(parts[name] for name in ("", *names))
    return hashlib.sha256(text.encode()).hexdigest()


def compile_key(
    target: BuildTarget, inputs: TargetInputs, toolkit_content: str, recipe: str
) -> CompileKey:
    return CompileKey(
        (
            ("kernel release", target.kernel),
            ("toolkit build tree and toolchain", toolkit_content),
            ("driver version", target.driver),
            ("driver package", inputs.package.sha256),
            ("firmware package", inputs.firmware.sha256 if inputs.firmware else ""),
            ("driver git SHA", inputs.git_sha),
            ("modules", ",".join(target.modules)),
            ("compile recipe", recipe),
            ("signing certificate", inputs.signer.certificate_sha256 if inputs.signer else ""),
        )
    )


def toolkit_content(
    podman: Podman,
    spec: BuildSpec,
    dockerfile: str,
    cache: CompileCache,
    on_line: LineSink | None,
) -> str:
    """The digest of what the compile reads from the toolkit, printed by the compile-inputs
    stage; remembered in the cache per toolkit digest, release and stage recipe."""
    recipe = recipe_digest(dockerfile, (INPUTS_STAGE,))
    material = [spec.build_args["TOOLKIT_IMAGE"], spec.build_args["KERNEL_RELEASE"], recipe]
    name = hashlib.sha256(json.dumps(material).encode()).hexdigest()
    if known := cache.remembered(name):
        return known
    printed: list[str] = []

    def watch(line: str) -> None:
        if match := INPUTS_MARK.match(line.strip()):
            printed.append(match.group(1))
        if on_line is not None:
            on_line(line)

    stage = replace(spec, target=INPUTS_STAGE, labels={}, annotations={}, secrets={})
    podman.remove_image(podman.build(stage, watch))
    if len(printed) != 1:
        raise HabanaError("the compile-inputs stage did not print one COMPILE-INPUTS line")
    if (said := cache.remember(name, printed[0])) and on_line is not None:
        on_line(said)
    return printed[0]


def compile_into(
    podman: Podman, spec: BuildSpec, destination: Path, work: Path, on_line: LineSink | None
) -> None:
    """Compile (the `compiled` stage, every step fresh) and unpack what it holds into
    destination, which must exist and be empty."""
    image_id = podman.build(
        replace(spec, target=COMPILED_STAGE, labels={}, annotations={}), on_line
    )
    tar_path = work / "compiled.tar"
    try:
        podman.export_rootfs(image_id, tar_path, on_line)
    finally:
        podman.remove_image(image_id)
    prefix = COMPILED_DIR + "/"
    with tarfile.open(tar_path) as tar:
        members = []
        for member in tar:
            name = archive.relative_name(member.name)
            if not name.startswith(prefix):
                continue
            member.name = name.removeprefix(prefix)
            if member.islnk():
                member.linkname = archive.relative_name(member.linkname).removeprefix(prefix)
            members.append(member)
        archive.extract(tar, destination, members)
    tar_path.unlink()
    if not any(destination.iterdir()):
        raise CheckError("the compiled stage holds no files")


def compiled_files(
    podman: Podman,
    settings: CompileSettings,
    spec: BuildSpec,
    key: CompileKey | None,
    destination: Path,
    on_line: LineSink | None,
) -> CompileRecord:
    """The compiled files, in destination (which must not exist): the cache's entry for the key
    on a hit; else compiled now (and stored, when there is a cache). What was done is logged
    and returned."""
    started = time.monotonic()
    say = on_line or (lambda line: None)
    work = spec.iidfile.parent

    def record(cache: str, note: str) -> CompileRecord:
        digest, inputs = (key.digest, dict(key.inputs)) if key else ("", {})
        return CompileRecord(cache, note, digest, inputs, round(time.monotonic() - started, 1))

    if settings.cache is None or key is None:
        say(note := "compile cache: not used (compiled afresh)")
        _fresh(podman, spec, destination, work, on_line)
        return record(NOT_USED, note)
    say(f"compile key {key.digest[:16]}:\n{key.text}")
    state, note = REFRESHED, "compile cache: not read (--no-compile-cache); compiled afresh"
    if not settings.refresh:
        found = settings.cache.fetch(key, destination)
        say(found.note)
        if found.hit:
            return record(HIT, found.note)
        state, note = MISS, found.note
    else:
        say(note)
    try:
        staged = settings.cache.staging()
    except OSError as exc:  # another user's cache, readable but not ours to write
        say(note := f"{note}; not stored ({exc.strerror})")
        _fresh(podman, spec, destination, work, on_line)
        return record(state, note)
    try:
        _fresh(podman, spec, staged / FILES, work, on_line)
        shutil.copytree(staged / FILES, destination, symlinks=True)
        settings.cache.store(key, staged)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already once stored
    say(f"compiled files stored in the compile cache: {key.digest[:16]}")
    return record(state, note)


def _fresh(
    podman: Podman, spec: BuildSpec, destination: Path, work: Path, on_line: LineSink | None
) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    destination.chmod(0o755)  # the same mode whatever the umask: COPY reads it
    compile_into(podman, spec, destination, work, on_line)
