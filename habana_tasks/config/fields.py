"""Checks of single values in a versions file, each problem recorded as one line that names the
file, the key, the value and what is expected; versions_file.py and sections.py check the file table
by table with them."""

from __future__ import annotations

import difflib
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# What a TOML key may be written with, unquoted.
BARE_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "_-")

PLACEHOLDERS = (
    "kernel", "kernel_tag", "arch", "oci_arch", "driver", "rhel_version", "rhel_major"
)  # fmt: skip
MAX_SHOWN = 80  # longer values are named by their type in messages
NAMES_SHOWN = 3  # names listed in one message before "and N more"


class Problems:
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


def quote(key: str) -> str:
    """A key as TOML would write it: bare when it can be, else quoted with escapes."""
    return key if key and BARE_KEY_CHARS.issuperset(key) else json.dumps(key)


def check_keys(
    problems: Problems, table: Mapping[str, Any], prefix: str, known: Iterable[str]
) -> None:
    known = tuple(known)
    for key in table:
        if key in known:
            continue
        shown = f"{prefix}.{quote(key)}" if prefix else quote(key)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        problems.items.append(f"{problems.path}: {shown}: unknown key; {hint}")


def table(problems: Problems, data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, value, "expected a table")
        return {}
    return value


def text(
    problems: Problems, table: Mapping[str, Any], key: str, *, required: bool = False
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


def string_list(
    problems: Problems, table: Mapping[str, Any], key: str, *, required: bool = False
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


def template(
    problems: Problems, table: Mapping[str, Any], key: str, *, required: bool = False
) -> str | None:
    value = text(problems, table, key, required=required)
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


def render(
    problems: Problems, key: str, template: str | None, values: Mapping[str, str | None]
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


def names_shown(names: Sequence[str], limit: int = NAMES_SHOWN) -> str:
    """`a, b, c and 4 more`: a long list named in a one-line message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
