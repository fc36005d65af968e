"""Reading a registry's answers: its JSON documents, its OCI error bodies, its Link headers."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import requests

from habana_tasks.core.errors import RegistryError

# The error codes by which a registry says, authenticated, that something does not exist.
ABSENT_CODES = frozenset(("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A registry document parsed and checked to be a JSON object, else a RegistryError."""
    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} is not JSON ({len(body)} bytes)") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object (a {type(data).__name__})")
    return data


def error_codes(response: requests.Response) -> set[str]:
    """The codes of an OCI error body; none when the body is not of that shape."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return set()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)}


def says_absent(response: requests.Response) -> bool:
    """An authenticated 404 with a code that means "no such manifest or repository"."""
    return response.status_code == HTTPStatus.NOT_FOUND and bool(
        error_codes(response) & ABSENT_CODES
    )


def raise_for_status(response: requests.Response, what: str) -> None:
    if response.status_code < HTTPStatus.BAD_REQUEST:
        return
    codes = ", ".join(sorted(error_codes(response))) or response.reason
    raise RegistryError(f"{what}: HTTP {response.status_code} ({codes})")


def next_link(response: requests.Response, base: str) -> str | None:
    """The next page's URL from a Link header, as requests parses it (relative links resolved
    against base)."""
    target = response.links.get("next", {}).get("url")
    if not target:
        return None
    return target if "://" in target else base + target


def upload_location(response: requests.Response, origin: str, what: str) -> str:
    """Where an upload continues (Location, absolute or relative); on the registry's own host
    only, so that credentials never go elsewhere."""
    location = response.headers.get("Location", "")
    if not location:
        raise RegistryError(f"{what}: the registry gave no upload location")
    url = location if "://" in location else origin + location
    if not url.startswith(origin + "/"):
        raise RegistryError(f"{what}: the upload continues on another host; refused")
    return url
