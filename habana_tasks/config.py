"""versions.toml: parsed into frozen build targets, with every problem reported at once."""

from __future__ import annotations

import difflib
import json
import re
import string
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from habana_tasks import kernel_release
from habana_tasks.errors import ConfigError, UsageError
from habana_tasks.image_reference import ImageReference, registry_host_problem
from habana_tasks.tags import image_tag, tag_problem

DRIVER_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)+(-[0-9A-Za-z.]+)?\Z")
MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
RHEL_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")
PLACEHOLDERS = ("kernel", "arch", "oci_arch", "driver", "rhel_version", "rhel_major")
DEFAULT_MODULES = ("habanalabs",)
MAX_SHOWN = 80  # longer values are named by their type in messages
DRIVER_EXPECTED = "expected a driver version like 1.6.0-439"
RELEASE_EXPECTED = (
    "expected a full kernel release as `uname -r` prints it "
    "(e.g. 4.18.0-372.19.1.el8_6.x86_64 or 6.1.0-56-amd64)"
)

SCHEMA: dict[str, tuple[str, ...]] = {
    "": ("library", "base", "toolkit", "driver", "drivers", "kernels", "discover"),
    "library": ("repository", "source", "vendor", "insecure_registries"),
    "base": ("image",),
    "toolkit": ("image",),
    "driver": ("package_url", "firmware_url", "modules"),
    "drivers.*": ("package_url", "firmware_url", "modules"),
    "kernels[]": ("release", "drivers", "arch", "rhel_version", "openshift"),
    "discover": ("release_repository", "minors", "arches", "drivers", "rt"),
}


@dataclass(frozen=True)
class BuildTarget:
    """One image to maintain: one driver version for one kernel release."""

    kernel: str
    arch: str
    rhel_version: str | None
    driver: str
    modules: tuple[str, ...]
    base_image: str
    toolkit_image: str
    package_url: str
    firmware_url: str | None
    repository: str
    tag: str
    openshift: tuple[str, ...] = ()

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
class Config:
    path: Path
    repository: str
    source: str
    vendor: str
    insecure_registries: frozenset[str]
    targets: tuple[BuildTarget, ...] = field(default=())
    discover: DiscoverSettings = field(default_factory=DiscoverSettings)

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
            kernels = sorted({t.kernel for t in self.targets})
            wanted = " and ".join(
                f"{k} {v!r}" for k, v in (("kernel", kernel), ("driver", driver)) if v is not None
            )
            close = difflib.get_close_matches(kernel or "", kernels, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"known kernels: {', '.join(kernels)}"
            )
            raise UsageError(f"{self.path}: no kernels entry with {wanted}", hint=hint)
        return chosen


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, key: str, value: object, expected: str) -> None:
        shown = repr(value)
        if isinstance(value, dict) or len(shown) > MAX_SHOWN:
            shown = f"<{type(value).__name__}>" if isinstance(value, dict | list) else shown
        item = f"{self.path}: {key} = {shown}: {expected}"
        if item not in self.items:
            self.items.append(item)

    def missing(self, key: str, expected: str) -> None:
        self.items.append(f"{self.path}: {key} is missing: {expected}")


def load(path: Path) -> Config:
    """Read and validate versions.toml; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        where = f"byte 0x{byte:02x} at offset {exc.start}"
        raise ConfigError(
            [f"{path}: not UTF-8 text ({where}); expected a UTF-8 TOML file"]
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> Config:
    """The file's tables, each checked by its own helper; every problem raised at once."""
    problems = _Problems(path)
    _check_keys(problems, data, "", SCHEMA[""])
    sections = {name: _table(problems, data, name) for name in ("library", "base", "toolkit")}
    for name, table in sections.items():
        _check_keys(problems, table, name, SCHEMA[name])
    library = _library(problems, sections["library"])
    templates = _templates(problems, data, sections["base"], sections["toolkit"])
    kernels = _kernel_entries(problems, data)
    targets, used = _targets(problems, kernels, templates, library.repository)
    discover = _discover_settings(problems, _table(problems, data, "discover"))
    for version in sorted(set(templates.overrides) - used):
        problems.add(f"drivers.{_quote(version)}", version, "no [[kernels]] entry uses this driver")
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
    )


@dataclass(frozen=True)
class _Library:
    repository: str | None
    source: str
    vendor: str
    insecure: tuple[str, ...]


def _library(problems: _Problems, table: Mapping[str, Any]) -> _Library:
    repository = _string(problems, table, "library.repository", required=True)
    if repository:
        try:
            ref = ImageReference.parse(repository)
            if ref.tag or ref.digest:
                problems.add("library.repository", repository, "expected a repository without tag")
        except ValueError as exc:
            problems.add("library.repository", repository, str(exc))
    insecure = _string_list(problems, table, "library.insecure_registries") or ()
    for host in insecure:
        if why := registry_host_problem(host):
            problems.add("library.insecure_registries", host, why)
    source = _string(problems, table, "library.source") or ""
    vendor = _string(problems, table, "library.vendor") or ""
    return _Library(repository, source, vendor, insecure)


@dataclass(frozen=True)
class _Templates:
    base: str | None
    toolkit: str | None
    defaults: dict[str, Any]  # [driver]: package_url, firmware_url, modules
    overrides: dict[str, dict[str, Any]]  # [drivers."<version>"], defaults filled in


def _templates(
    problems: _Problems,
    data: Mapping[str, Any],
    base: Mapping[str, Any],
    toolkit: Mapping[str, Any],
) -> _Templates:
    driver = _table(problems, data, "driver")
    _check_keys(problems, driver, "driver", SCHEMA["driver"])
    defaults = _driver_settings(problems, driver, "driver", None)
    overrides: dict[str, dict[str, Any]] = {}
    for version, settings in _table(problems, data, "drivers").items():
        key = f"drivers.{_quote(version)}"
        if not DRIVER_VERSION_RE.match(version):
            problems.add(key, version, DRIVER_EXPECTED)
        if not isinstance(settings, dict):
            problems.add(key, settings, "expected a table")
            continue
        _check_keys(problems, settings, key, SCHEMA["drivers.*"])
        overrides[version] = _driver_settings(problems, settings, key, defaults)
    return _Templates(
        _template(problems, base, "base.image", required=True),
        _template(problems, toolkit, "toolkit.image", required=True),
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


def _kernel_entries(problems: _Problems, data: Mapping[str, Any]) -> list[_Kernel]:
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


def _kernel_entry(problems: _Problems, key: str, entry: Mapping[str, Any]) -> _Kernel | None:
    _check_keys(problems, entry, key, SCHEMA["kernels[]"])
    release = _string(problems, entry, f"{key}.release", required=True)
    if release is not None and not kernel_release.is_valid_release(release):
        problems.add(f"{key}.release", release, RELEASE_EXPECTED)
        release = None
    arch = _arch(problems, key, entry, release)
    rhel = _rhel_version(problems, key, entry, release)
    openshift = _string_list(problems, entry, f"{key}.openshift") or ()
    versions = _string_list(problems, entry, f"{key}.drivers", required=True) or ()
    if entry.get("drivers") == []:
        problems.add(f"{key}.drivers", [], "expected at least one driver version")
    for version in versions:
        if not DRIVER_VERSION_RE.match(version):
            problems.add(f"{key}.drivers", version, DRIVER_EXPECTED)
    if release is None or arch is None:
        return None
    return _Kernel(key, release, arch, rhel, versions, openshift)


def _arch(
    problems: _Problems, key: str, entry: Mapping[str, Any], release: str | None
) -> str | None:
    derived = kernel_release.derive_arch(release) if release else None
    arch = _string(problems, entry, f"{key}.arch") or derived
    if arch is None and release is not None:
        problems.missing(f"{key}.arch", f"release {release!r} names no architecture; set arch")
    elif arch is not None and arch not in kernel_release.KNOWN_ARCHES:
        problems.add(
            f"{key}.arch", arch, f"expected one of {', '.join(kernel_release.KNOWN_ARCHES)}"
        )
        return None
    elif derived is not None and derived != arch:
        problems.add(f"{key}.arch", arch, f"release {release!r} is for {derived}")
    return arch


def _rhel_version(
    problems: _Problems, key: str, entry: Mapping[str, Any], release: str | None
) -> str | None:
    given = _string(problems, entry, f"{key}.rhel_version")
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
    problems: _Problems,
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
    problems: _Problems,
    kernel: _Kernel,
    version: str,
    tag: str,
    templates: _Templates,
    repository: str | None,
) -> BuildTarget | None:
    settings = templates.overrides.get(version, templates.defaults)
    values = {
        "kernel": kernel.release,
        "arch": kernel.arch,
        "oci_arch": kernel_release.OCI_ARCH[kernel.arch],
        "driver": version,
        "rhel_version": kernel.rhel,
        "rhel_major": kernel.rhel.split(".")[0] if kernel.rhel else None,
    }
    key = kernel.key
    base = _render(problems, f"{key} (base.image)", templates.base, values)
    toolkit = _render(problems, f"{key} (toolkit.image)", templates.toolkit, values)
    package = _render(problems, f"{key} (package_url)", settings.get("package_url"), values)
    firmware = _render(problems, f"{key} (firmware_url)", settings.get("firmware_url"), values)
    for name, image in (("base.image", base), ("toolkit.image", toolkit)):
        if image is None:
            continue
        try:
            ImageReference.parse(image)
        except ValueError as exc:
            problems.add(f"{key} ({name})", image, str(exc))
            return None
    if base is None or toolkit is None or package is None or not repository:
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
    )


def _discover_settings(problems: _Problems, table: Mapping[str, Any]) -> DiscoverSettings:
    _check_keys(problems, table, "discover", SCHEMA["discover"])
    defaults = DiscoverSettings()
    repository = _string(problems, table, "discover.release_repository")
    if repository:
        try:
            ImageReference.parse(repository)
        except ValueError as exc:
            problems.add("discover.release_repository", repository, str(exc))
    minors = _string_list(problems, table, "discover.minors") or ()
    for minor in minors:
        if not re.match(r"^[0-9]+\.[0-9]+\Z", minor):
            problems.add("discover.minors", minor, "expected an OpenShift minor like 4.14")
    arches = _string_list(problems, table, "discover.arches") or defaults.arches
    for arch in arches:
        if arch not in kernel_release.KNOWN_ARCHES:
            problems.add(
                "discover.arches", arch, f"expected one of {', '.join(kernel_release.KNOWN_ARCHES)}"
            )
    drivers = _string_list(problems, table, "discover.drivers") or ()
    for version in drivers:
        if not DRIVER_VERSION_RE.match(version):
            problems.add("discover.drivers", version, DRIVER_EXPECTED)
    rt = table.get("rt", False)
    if not isinstance(rt, bool):
        problems.add("discover.rt", rt, "expected true or false")
        rt = False
    return DiscoverSettings(repository or defaults.release_repository, minors, arches, drivers, rt)


def _quote(key: str) -> str:
    """A key as TOML would write it: bare when it can be, else quoted with escapes."""
    return key if re.match(r"^[A-Za-z0-9_-]+\Z", key) else json.dumps(key)


def _check_keys(
    problems: _Problems, table: Mapping[str, Any], prefix: str, known: Iterable[str]
) -> None:
    known = tuple(known)
    for key in table:
        if key in known:
            continue
        shown = f"{prefix}.{_quote(key)}" if prefix else _quote(key)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        problems.items.append(f"{problems.path}: {shown}: unknown key; {hint}")


def _table(problems: _Problems, data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, value, "expected a table")
        return {}
    return value


def _string(
    problems: _Problems, table: Mapping[str, Any], key: str, *, required: bool = False
) -> str | None:
    name = key.rsplit(".", 1)[-1]
    if name not in table:
        if required:
            problems.missing(key, "expected a string")
        return None
    value = table[name]
    if not isinstance(value, str) or not value.strip():
        problems.add(key, value, "expected a non-empty string")
        return None
    return value


def _string_list(
    problems: _Problems, table: Mapping[str, Any], key: str, *, required: bool = False
) -> tuple[str, ...] | None:
    name = key.rsplit(".", 1)[-1]
    if name not in table:
        if required:
            problems.missing(key, "expected an array of strings")
        return None
    value = table[name]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(key, value, "expected an array of non-empty strings")
        return None
    return tuple(value)


def _template(
    problems: _Problems, table: Mapping[str, Any], key: str, *, required: bool = False
) -> str | None:
    value = _string(problems, table, key, required=required)
    if value is None:
        return None
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value)]
    except ValueError as exc:
        problems.add(key, value, f"is not a valid template ({exc})")
        return None
    if any(f is not None and (spec or conv) for f, spec, conv in parsed):
        problems.add(key, value, "a placeholder takes no !conversion or :format; write {name}")
        return None
    fields = [f for f, _, _ in parsed if f is not None]
    for name in fields:
        if name not in PLACEHOLDERS:
            close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
            hint = f"did you mean {{{close[0]}}}?" if close else f"known: {', '.join(PLACEHOLDERS)}"
            problems.add(key, value, f"unknown placeholder {{{name}}}; {hint}")
            return None
    return value


def _driver_settings(
    problems: _Problems, table: Mapping[str, Any], prefix: str, defaults: Mapping[str, Any] | None
) -> dict[str, Any]:
    settings: dict[str, Any] = dict(defaults or {})
    for name, required in (("package_url", defaults is None), ("firmware_url", False)):
        key = f"{prefix}.{name}"
        template = _template(problems, table, key, required=required)
        if template is None:
            continue
        if why := url_problem(template.format(**dict.fromkeys(PLACEHOLDERS, "x"))):
            problems.add(key, template, why)
            continue
        settings[name] = template
    modules = _string_list(problems, table, f"{prefix}.modules")
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


def url_problem(url: str) -> str | None:
    """Why a package URL cannot be fetched as written; None when its form is usable."""
    expected = "expected http(s)://host/path or file:///absolute/path"
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"contains white space or a control character; {expected}"
    parts = urlsplit(url)
    if not parts.scheme:
        return f"has no scheme; {expected}"
    if parts.scheme not in ("http", "https", "file"):
        return f"scheme {parts.scheme!r} is not supported; {expected}"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"names host {parts.netloc!r}, which a file URL cannot reach; {expected}"
        if not parts.path.startswith("/"):
            return f"is a relative file path; {expected}"
        return None
    if not parts.hostname:
        return f"has no host; {expected}"
    if parts.username is not None or parts.password is not None:
        return "holds credentials; put them in ~/.netrc, never in versions.toml"
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError:
        return f"has an invalid port; {expected}"
    return None


def _render(
    problems: _Problems, key: str, template: str | None, values: Mapping[str, str | None]
) -> str | None:
    if template is None:
        return None
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    for name in fields:
        if values.get(name) is None:
            problems.add(
                key,
                template,
                f"uses {{{name}}} but kernel {values['kernel']!r} has no RHEL version; "
                "set rhel_version in its [[kernels]] entry",
            )
            return None
    return template.format(**values)
