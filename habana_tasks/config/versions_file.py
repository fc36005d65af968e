"""versions.toml: parsed into frozen build targets, with every problem reported at once."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from habana_tasks.config import fields, kernel_release, sections, tags
from habana_tasks.config.flavours import DEFAULT as DEFAULT_FLAVOUR
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.tags import image_tag, tag_problem
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core import local_files
from habana_tasks.core.errors import ConfigError

MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
RHEL_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")
# One kernel argument as a MachineConfig's kernelArguments and GRUB take it: name[=value].
KERNEL_ARG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}(=[A-Za-z0-9_.,:/@+=-]{0,128})?\Z")
KERNEL_ARGS_MAX = 16
# Set by the load test itself (its console, its init, how it powers off): never the node's.
LOAD_TEST_ARGS = ("console", "init", "rdinit", "panic", "quiet")
KERNEL_ARG_EXPECTED = (
    f"expected at most {KERNEL_ARGS_MAX} kernel arguments, each name or name=value "
    f"(letters, digits, _ . - and in values , : / @ + =), none of {', '.join(LOAD_TEST_ARGS)}"
)
DEFAULT_MODULES = ("habanalabs",)
RELEASE_EXPECTED = (
    "expected a full kernel release as `uname -r` prints it "
    "(e.g. 4.18.0-372.19.1.el8_6.x86_64 or 6.1.0-56-amd64)"
)

SCHEMA: dict[str, tuple[str, ...]] = {
    "": tuple(
        [
            "library",
            "image",
            "base",
            "toolkit",
            "driver",
            "drivers",
            "kernels",
            "discover",
            "signing",
            "cosign",
            "cache",
        ]
    ),
    "library": ("repository", "source", "vendor", "insecure_registries"),
    "image": ("flavour",),
    "base": ("image",),
    "toolkit": ("image",),
    "driver": ("package_url", "firmware_url", "modules"),
    "drivers.*": ("package_url", "firmware_url", "modules"),
    "kernels[]": ("release", "drivers", "arch", "rhel_version", "openshift", "node_kernel_args"),
    "discover": sections.DISCOVER_KEYS,
    "signing": sections.SIGNING_KEYS,
    "cosign": sections.COSIGN_KEYS,
    "cache": sections.CACHE_KEYS,
}


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate versions.toml; raises ConfigError listing every problem."""
    try:
        text = local_files.read_text(path, local_files.VERSIONS_FILE)
    except local_files.LocalFileError as exc:
        raise ConfigError([str(exc)]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse(data, path, os.environ if environ is None else environ)


def parse(data: Mapping[str, Any], path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The file's tables, each checked by its own helper; every problem raised at once."""
    problems = fields.Problems(path)
    fields.check_keys(problems, data, "", SCHEMA[""])
    names = ("library", "image", "base", "toolkit")
    tables = {name: fields.table(problems, data, name) for name in names}
    for name, table in tables.items():
        fields.check_keys(problems, table, name, SCHEMA[name])
    library = sections.library(problems, tables["library"])
    templates = _templates(problems, data, tables["base"], tables["toolkit"])
    templates = replace(templates, flavour=sections.flavour(problems, tables["image"]))
    kernels = _kernel_entries(problems, data)
    targets, used = _targets(problems, kernels, templates, library.repository)
    discover = sections.discover_settings(problems, fields.table(problems, data, "discover"))
    signing = sections.signing(problems, data, path, environ or {})
    cache = sections.cache_settings(problems, fields.table(problems, data, "cache"))
    image_signing = sections.image_signing(problems, fields.table(problems, data, "cosign"), path)
    for version in sorted(set(templates.overrides) - used):
        problems.add(
            f"drivers.{fields.quote(version)}", version, "no [[kernels]] entry uses this driver"
        )
    if problems.items:
        raise ConfigError(problems.items)
    assert library.repository is not None
    return Config(
        path,
        library.repository,
        library.source,
        library.vendor,
        frozenset(library.insecure),
        tuple(targets),
        discover,
        signing,
        cache,
        image_signing,
    )


@dataclass(frozen=True)
class _Templates:
    base: str | None
    toolkit: str | None
    defaults: dict[str, Any]  # [driver]: package_url, firmware_url, modules
    overrides: dict[str, dict[str, Any]]  # [drivers."<version>"], defaults filled in
    flavour: str = DEFAULT_FLAVOUR


def _templates(
    problems: fields.Problems,
    data: Mapping[str, Any],
    base: Mapping[str, Any],
    toolkit: Mapping[str, Any],
) -> _Templates:
    driver = fields.table(problems, data, "driver")
    fields.check_keys(problems, driver, "driver", SCHEMA["driver"])
    defaults = _driver_settings(problems, driver, "driver", None)
    overrides: dict[str, dict[str, Any]] = {}
    for version, settings in fields.table(problems, data, "drivers").items():
        key = f"drivers.{fields.quote(version)}"
        if not sections.DRIVER_VERSION_RE.match(version):
            problems.add(key, version, sections.DRIVER_EXPECTED)
        if not isinstance(settings, dict):
            problems.add(key, settings, "expected a table")
            continue
        fields.check_keys(problems, settings, key, SCHEMA["drivers.*"])
        overrides[version] = _driver_settings(problems, settings, key, defaults)
    return _Templates(
        # [base] is optional; written, it must name the image (remove it to build from scratch).
        fields.template(problems, base, "base.image", required="base" in data),
        fields.template(problems, toolkit, "toolkit.image", required=True),
        defaults,
        overrides,
    )


@dataclass(frozen=True)
class _Kernel:
    key: str
    release: str
    arch: str
    rhel: str | None
    drivers: tuple[str, ...]
    openshift: tuple[str, ...]
    node_kernel_args: tuple[str, ...] = ()


def _kernel_entries(problems: fields.Problems, data: Mapping[str, Any]) -> list[_Kernel]:
    """The [[kernels]] entries without a problem; every field of every entry is checked."""
    entries = data.get("kernels", [])
    if "kernels" not in data:
        problems.missing("kernels", "expected at least one [[kernels]] entry")
        return []
    if not isinstance(entries, list) or not entries:
        problems.add("kernels", entries, "expected a non-empty array of [[kernels]] tables")
        return []
    found = []
    for index, entry in enumerate(entries):
        key = f"kernels[{index}]"
        if not isinstance(entry, dict):
            problems.add(key, entry, "expected a table with release and drivers")
            continue
        before = len(problems.items)
        kernel = _kernel_entry(problems, key, entry)
        if kernel is not None and len(problems.items) == before:
            found.append(kernel)
    return found


def _kernel_entry(problems: fields.Problems, key: str, entry: Mapping[str, Any]) -> _Kernel | None:
    fields.check_keys(problems, entry, key, SCHEMA["kernels[]"])
    release = fields.text(problems, entry, f"{key}.release", required=True)
    if release is not None and not kernel_release.is_valid_release(release):
        problems.add(f"{key}.release", release, RELEASE_EXPECTED)
        release = None
    arch = _arch(problems, key, entry, release)
    rhel = _rhel_version(problems, key, entry, release)
    openshift = fields.string_list(problems, entry, f"{key}.openshift") or ()
    versions = fields.string_list(problems, entry, f"{key}.drivers", required=True) or ()
    if entry.get("drivers") == []:
        problems.add(f"{key}.drivers", [], "expected at least one driver version")
    for version in versions:
        if not sections.DRIVER_VERSION_RE.match(version):
            problems.add(f"{key}.drivers", version, sections.DRIVER_EXPECTED)
    node_args = _node_kernel_args(problems, key, entry)
    if release is None or arch is None:
        return None
    return _Kernel(key, release, arch, rhel, versions, openshift, node_args)


def _node_kernel_args(
    problems: fields.Problems, key: str, entry: Mapping[str, Any]
) -> tuple[str, ...]:
    """What the nodes boot this kernel with (a MachineConfig's kernelArguments): the load test
    boots with them too, and they decide whether the kernel trusts a machine-owner key."""
    args = fields.string_list(problems, entry, f"{key}.node_kernel_args") or ()
    if len(args) > KERNEL_ARGS_MAX:
        problems.add(f"{key}.node_kernel_args", f"{len(args)} arguments", KERNEL_ARG_EXPECTED)
        return ()
    bad = [
        arg
        for arg in args
        if not KERNEL_ARG_RE.match(arg) or arg.split("=", 1)[0] in LOAD_TEST_ARGS
    ]
    for arg in bad:
        problems.add(f"{key}.node_kernel_args", arg, KERNEL_ARG_EXPECTED)
    return () if bad else tuple(dict.fromkeys(args))


def _arch(
    problems: fields.Problems, key: str, entry: Mapping[str, Any], release: str | None
) -> str | None:
    derived = kernel_release.derive_arch(release) if release else None
    arch = fields.text(problems, entry, f"{key}.arch") or derived
    if arch is None and release is not None:
        problems.missing(f"{key}.arch", f"release {release!r} names no architecture; set arch")
    elif arch is not None and (why := kernel_release.arch_problem(arch, release)):
        problems.add(f"{key}.arch", arch, why)
        return None
    return arch


def _rhel_version(
    problems: fields.Problems, key: str, entry: Mapping[str, Any], release: str | None
) -> str | None:
    given = fields.text(problems, entry, f"{key}.rhel_version")
    derived = kernel_release.derive_rhel_version(release) if release else None
    if given is not None and not RHEL_VERSION_RE.match(given):
        problems.add(f"{key}.rhel_version", given, "expected MAJOR or MAJOR.MINOR, e.g. 8.6")
    elif given is not None and derived is not None and given != derived:
        problems.add(
            f"{key}.rhel_version",
            given,
            f"release {release!r} is RHEL {derived}; leave rhel_version out or match it",
        )
    return given or derived


def _targets(
    problems: fields.Problems,
    kernels: Sequence[_Kernel],
    templates: _Templates,
    repository: str | None,
) -> tuple[list[BuildTarget], set[str]]:
    """One target per kernel x driver pair; pairs and tags must be unique. Also returns the
    driver versions the entries use."""
    targets: list[BuildTarget] = []
    seen: dict[tuple[str, str], str] = {}
    tags: dict[str, str] = {}
    for kernel in kernels:
        for version in kernel.drivers:
            if (kernel.release, version) in seen:
                where = seen[kernel.release, version]
                problems.add(
                    f"{kernel.key}.drivers",
                    version,
                    f"duplicate pair: {kernel.release} x {version} is already in {where}",
                )
                continue
            seen[kernel.release, version] = kernel.key
            tag = image_tag(version, kernel.release)
            why = tag_problem(tag) or (f"clashes with {tags[tag]}" if tag in tags else None)
            if why:
                problems.add(f"{kernel.key}.release", kernel.release, f"image tag {tag!r} {why}")
                continue
            tags[tag] = kernel.key
            target = _target(problems, kernel, version, tag, templates, repository)
            if target is not None:
                targets.append(target)
    return targets, {version for _, version in seen}


def _target(
    problems: fields.Problems,
    kernel: _Kernel,
    version: str,
    tag: str,
    templates: _Templates,
    repository: str | None,
) -> BuildTarget | None:
    settings = templates.overrides.get(version, templates.defaults)
    values = {
        "kernel": kernel.release,
        # The release as a tag can hold it ('+' as '_'), for images tagged by kernel.
        "kernel_tag": tags.tag_text(kernel.release),
        "arch": kernel.arch,
        "oci_arch": kernel_release.OCI_ARCH[kernel.arch],
        "driver": version,
        "rhel_version": kernel.rhel,
        "rhel_major": kernel.rhel.split(".")[0] if kernel.rhel else None,
    }
    key = kernel.key
    base = fields.render(problems, f"{key} (base.image)", templates.base, values)
    toolkit = fields.render(problems, f"{key} (toolkit.image)", templates.toolkit, values)
    package = fields.render(problems, f"{key} (package_url)", settings.get("package_url"), values)
    firmware = fields.render(
        problems, f"{key} (firmware_url)", settings.get("firmware_url"), values
    )
    images = (("base.image", base, templates.base), ("toolkit.image", toolkit, templates.toolkit))
    for name, image, template in images:
        if image is None:
            continue
        try:
            ImageReference.parse(image)
        except ValueError as exc:
            hint = ""
            if "+" in kernel.release and "{kernel}" in (template or ""):
                hint = "; a tag cannot hold '+': write {kernel_tag} where the tag names the kernel"
            problems.add(f"{key} ({name})", image, f"{exc}{hint}")
            return None
    if (templates.base is not None and base is None) or toolkit is None or package is None:
        return None
    if not repository:
        return None
    return BuildTarget(
        kernel=kernel.release,
        arch=kernel.arch,
        rhel_version=kernel.rhel,
        driver=version,
        modules=tuple(settings.get("modules") or DEFAULT_MODULES),
        base_image=base,
        toolkit_image=toolkit,
        package_url=package,
        firmware_url=firmware,
        repository=repository,
        tag=tag,
        openshift=kernel.openshift,
        flavour=templates.flavour,
        node_kernel_args=kernel.node_kernel_args,
    )


def _driver_settings(
    problems: fields.Problems,
    table: Mapping[str, Any],
    prefix: str,
    defaults: Mapping[str, Any] | None,
) -> dict[str, Any]:
    settings: dict[str, Any] = dict(defaults or {})
    for name, required in (("package_url", defaults is None), ("firmware_url", False)):
        key = f"{prefix}.{name}"
        template = fields.template(problems, table, key, required=required)
        if template is None:
            continue
        if why := fields.url_problem(template.format(**dict.fromkeys(fields.PLACEHOLDERS, "x"))):
            problems.add(key, template, why)
            continue
        settings[name] = template
    modules = fields.string_list(problems, table, f"{prefix}.modules")
    if modules is not None:
        if not modules:
            problems.add(f"{prefix}.modules", [], "expected at least one module name")
        for module in modules:
            if not MODULE_RE.match(module):
                problems.add(f"{prefix}.modules", module, "expected a module name like habanalabs")
        if len(set(modules)) != len(modules):
            problems.add(f"{prefix}.modules", list(modules), "lists a module twice")
        settings["modules"] = modules
    return settings
