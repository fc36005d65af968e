"""Command-line arguments, checked before the first request or child process: each check takes
the option's name and the text typed, and returns the typed value or raises a UsageError (exit 2)
naming the option, the value and what is expected."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from habana_tasks.config import kernel_release, openshift, sections, versions_file
from habana_tasks.config.fields import MAX_SHOWN
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.tags import tag_problem
from habana_tasks.core import local_files
from habana_tasks.core.errors import UsageError

# Ranges shown in --help and enforced here.
JOBS = (1, 32)
TIMEOUT_SECONDS = (1.0, 3600.0)
OLDER_THAN_DAYS = (0, 36500)
# A matrix holds at most 256 jobs per workflow run (GitHub Actions' documented limit).
MAX_JOBS = (1, 256)
# One argument stays under Linux's MAX_ARG_STRLEN (128 KiB): `--only` of any batch can be run.
MAX_SELECTOR = 100_000
FORMATS = ("table", "json", "markdown")
# Kubernetes names: a namespace is a DNS-1123 label; KMM puts the Module's name in node label
# keys (kmm.node.kubernetes.io/<namespace>.<name>.ready), so it must be one too.
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
MAX_SUBDOMAIN = 253


def _fail(option: str, value: object, expected: str) -> UsageError:
    shown = repr(value) if len(repr(value)) <= MAX_SHOWN else repr(str(value)[:MAX_SHOWN]) + "…"
    return UsageError(f"{option} {shown}: expected {expected}")


def count(option: str, value: str | int, bounds: tuple[int, int]) -> int:
    """A whole number within bounds (inclusive)."""
    low, high = bounds
    expected = f"a whole number from {low} to {high}"
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise _fail(option, value, expected) from None
    if not low <= number <= high:
        raise _fail(option, value, expected)
    return number


def seconds(option: str, value: str | float, bounds: tuple[float, float]) -> float:
    """A finite number of seconds within bounds (inclusive)."""
    low, high = bounds
    expected = f"seconds from {low:g} to {high:g}"
    try:
        number = float(str(value).strip())
    except ValueError:
        raise _fail(option, value, expected) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise _fail(option, value, expected)
    return number


def choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _fail(option, value, "one of " + ", ".join(choices))
    return value


def release(option: str, value: str) -> str:
    if not kernel_release.is_valid_release(value):
        raise _fail(option, value, versions_file.RELEASE_EXPECTED.removeprefix("expected "))
    return value


def driver(option: str, value: str) -> str:
    if not sections.DRIVER_VERSION_RE.match(value):
        raise _fail(option, value, sections.DRIVER_EXPECTED.removeprefix("expected "))
    return value


def arch(option: str, value: str) -> str:
    return choice(option, value, kernel_release.SUPPORTED_ARCHES)


def openshift_minor(option: str, value: str) -> str:
    if not openshift.OPENSHIFT_MINOR_RE.match(value):
        raise _fail(option, value, openshift.MINOR_EXPECTED)
    return value


def openshift_release(option: str, value: str) -> str:
    if not openshift.OPENSHIFT_RELEASE_RE.match(value):
        raise _fail(option, value, openshift.RELEASE_EXPECTED)
    return value


def dns_label(option: str, value: str) -> str:
    if not DNS_LABEL_RE.match(value):
        raise _fail(
            option, value, "a DNS-1123 label: at most 63 of a-z, 0-9 and '-', alphanumeric ends"
        )
    return value


def dns_subdomain(option: str, value: str) -> str:
    if len(value) > MAX_SUBDOMAIN or not DNS_SUBDOMAIN_RE.match(value):
        raise _fail(
            option,
            value,
            "a DNS-1123 subdomain (a Kubernetes object name): a-z, 0-9, '-' and '.', "
            f"at most {MAX_SUBDOMAIN}",
        )
    return value


def tag_list(option: str, value: str) -> tuple[str, ...]:
    """Image tags separated by commas or spaces (a matrix job's batch): at least one, each a
    valid tag, the whole at most MAX_SELECTOR characters."""
    if len(value) > MAX_SELECTOR:
        raise _fail(option, value, f"at most {MAX_SELECTOR} characters")
    tags = tuple(dict.fromkeys(value.replace(",", " ").split()))
    if not tags:
        raise _fail(option, value, "image tags separated by commas")
    for tag in tags:
        if why := tag_problem(tag):
            raise _fail(option, tag, f"image tags separated by commas (this one {why})")
    return tags


def _reference(option: str, value: str) -> ImageReference:
    try:
        return ImageReference.parse(value)
    except ValueError as exc:
        raise UsageError(f"{option} {value!r}: {exc}") from None


def image(option: str, value: str) -> str:
    """A fully qualified image reference, with a tag or a digest."""
    ref = _reference(option, value)
    if not ref.tag and not ref.digest:
        raise _fail(option, value, "registry/repository:tag or @sha256:… (no tag or digest)")
    return value


def repository(option: str, value: str) -> str:
    """A fully qualified repository, without tag or digest."""
    ref = _reference(option, value)
    if ref.tag or ref.digest:
        raise _fail(option, value, "registry/repository without a tag or digest")
    return value


def input_file(option: str, value: str, kind: local_files.FileKind) -> Path:
    """A regular file that exists, no larger than its kind's bound."""
    path = Path(value).expanduser()
    if not path.exists():
        raise _fail(option, value, f"an existing {kind.what}")
    try:
        local_files.check_optional(path, kind)
    except local_files.LocalFileError as exc:
        raise UsageError(f"{option}: {exc}") from None
    return path


def output_file(option: str, value: str) -> Path:
    """A path the command can write: not a directory or special file, in a writable directory."""
    path = Path(value).expanduser()
    if not value or value.endswith("/"):
        raise _fail(option, value, "a file path, not a directory")
    if path.exists() or path.is_symlink():
        mode = path.stat().st_mode if path.exists() else 0
        if (other := local_files.kind_of(mode)) is not None:
            raise _fail(option, value, f"a regular file to write (it is {other})")
        if not os.access(path, os.W_OK):
            raise _fail(option, value, "a file this user may write")
    parent = path.parent
    if not parent.is_dir():
        raise _fail(option, value, f"a file in an existing directory ({parent} is not one)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _fail(option, value, f"a file in a directory this user may write ({parent})")
    return path


def output_dir(option: str, value: str) -> str:
    """A folder the command can write into: an existing one, or one it can make."""
    path = Path(value).expanduser()
    if not value or "\0" in value:
        raise _fail(option, value, "a folder path")
    if path.exists() and not path.is_dir():
        raise _fail(option, value, "a folder (it is a file)")
    existing = path if path.is_dir() else path.parent
    if not existing.is_dir():
        raise _fail(option, value, f"a folder in an existing directory ({existing} is not one)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _fail(option, value, f"a folder this user may write ({existing})")
    return str(path)


def each(option: str, values: Sequence[str], check: Callable[[str, str], str]) -> tuple[str, ...]:
    """A repeatable option: every value through the same check."""
    return tuple(check(option, value) for value in values)


def optional(option: str, value: str | None, check: Callable[[str, str], str]) -> str | None:
    """An option that may be left out: None stays None, anything given is checked."""
    return None if value is None else check(option, value)


def optional_file(option: str, value: str | None, kind: local_files.FileKind) -> str | None:
    return None if value is None else str(input_file(option, value, kind))
