"""Vendor driver packages: downloaded once into a content-addressed cache, read without rpm tools.

The git SHA the build passes to `make GIT_SHA=` comes from `KMD_LAST_GIT_SHA=` in the package's
`dkms.conf`; anything but exactly one well-formed value is an error naming the package. The same
file may restrict the kernels the package builds for (DKMS's `BUILD_EXCLUSIVE_KERNEL` and
`BUILD_EXCLUSIVE_ARCH`, regular expressions DKMS matches against the release and the
architecture): the plan refuses other kernels before compiling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import requests
import rpmfile

from habana_tasks.core import local_files
from habana_tasks.core.archive import relative_name
from habana_tasks.core.errors import (
    BodyDeadlineError,
    DriverPackageError,
    HostError,
    TransientHTTPError,
)
from habana_tasks.core.http_client import (
    BODY_ERRORS,
    BodyReader,
    HTTPClient,
    redact,
    short_reason,
)

GIT_SHA_RE = re.compile(r"^[0-9a-f]{7,40}\Z")
CHUNK = 1 << 20


@dataclass(frozen=True)
class CachedPackage:
    url: str
    path: Path
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1]) or self.path.name


class PackageCache:
    """`<root>/sha256/<hex>` holds each package once; `<root>/urls/` maps a URL to its content
    and to the validators its server gave (ETag, Last-Modified, size).

    One instance serves one run: the first time a run asks for a URL that is cached, the server
    is asked once whether the package changed (a conditional GET, or a HEAD when the server gave
    no validator), so a package re-published under the same URL is noticed.
    """

    def __init__(self, root: Path, http: HTTPClient | None = None) -> None:
        self.root = root
        self.http = http or HTTPClient()
        self.downloads = 0
        self.revalidations = 0
        self._checked: set[str] = set()  # URLs already confirmed current in this run
        self._swept = False  # stale partial files removed yet in this run
        self._lock = threading.Lock()

    def fetch(self, url: str) -> CachedPackage:
        """The package at url: from the cache when intact and still current, else downloaded."""
        index = self.root / "urls" / (hashlib.sha256(url.encode()).hexdigest() + ".json")
        blobs = self.root / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        with self._lock:  # once per run, not per package
            if not self._swept:
                self._swept = True
                self._remove_stale_partials(blobs)
        record = self._cached(index)
        if record is not None and (url in self._checked or self._still_current(url, record)):
            self._checked.add(url)
            return CachedPackage(url, blobs / record["sha256"], record["sha256"], record["size"])
        fd, tmp_name = tempfile.mkstemp(dir=blobs, prefix=".partial-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size, validators = self._download(url, out)
                out.flush()
                os.fsync(out.fileno())
            path = blobs / digest
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        record = {"url": redact(url), "sha256": digest, "size": size, **validators}
        atomic_write(index, json.dumps(record).encode())
        with self._lock:
            self.downloads += 1
            self._checked.add(url)
        return CachedPackage(url, path, digest, size)

    def _remove_stale_partials(self, blobs: Path) -> None:
        """A run killed mid-download (SIGKILL) leaves its partial file: none outlives the bound."""
        oldest = time.time() - self.http.retry.download_deadline - 60
        for partial in blobs.glob(".partial-*"):
            with contextlib.suppress(FileNotFoundError):  # another run removed it first
                if partial.stat().st_mtime < oldest:
                    partial.unlink()

    def _cached(self, index: Path) -> dict[str, Any] | None:
        """The recorded entry, when its content is intact on disk."""
        try:
            record = json.loads(index.read_text())
            path = self.root / "sha256" / record["sha256"]
            if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if isinstance(record, dict) else None

    def _still_current(self, url: str, record: dict[str, Any]) -> bool:
        """Ask the source once whether the package changed since it was cached."""
        with self._lock:
            self.revalidations += 1
        parts = urlsplit(url)
        if parts.scheme == "file":
            try:
                stat = Path(unquote(parts.path)).stat()
            except OSError as exc:
                raise DriverPackageError(
                    f"{parts.path}: cannot read package: {exc.strerror}"
                ) from exc
            return stat.st_size == record["size"] and stat.st_mtime_ns == record.get("mtime_ns")
        headers = {}
        if etag := record.get("etag"):
            headers["If-None-Match"] = etag
        if modified := record.get("last_modified"):
            headers["If-Modified-Since"] = modified
        method = "GET" if headers else "HEAD"
        try:
            response = self.http.send(method, url, headers=headers, stream=True, netrc=True)
        except TransientHTTPError as exc:
            raise DriverPackageError(
                f"cannot check whether the package changed: {exc}", transient=True
            ) from exc
        except requests.RequestException as exc:
            raise DriverPackageError(f"{redact(url)}: {short_reason(exc)}", transient=True) from exc
        with response:
            if response.status_code == HTTPStatus.NOT_MODIFIED:
                return True
            if response.status_code != HTTPStatus.OK:
                raise DriverPackageError(
                    f"{redact(url)}: HTTP {response.status_code} ({response.reason}) "
                    "when checking whether the package changed"
                )
            if method == "HEAD":
                length = response.headers.get("Content-Length", "")
                return length.isdigit() and int(length) == record["size"]
        return False  # 200 to a conditional GET: the package changed

    def _download(self, url: str, out: BinaryIO) -> tuple[str, int, dict[str, Any]]:
        hasher = hashlib.sha256()
        size = 0
        parts = urlsplit(url)
        if parts.scheme == "file" or not parts.scheme:
            return _copy_local(Path(unquote(parts.path)), out)
        if parts.scheme not in ("http", "https"):
            raise DriverPackageError(f"{redact(url)}: unsupported URL scheme {parts.scheme!r}")
        deadline = time.monotonic() + self.http.retry.download_deadline
        try:
            response = self.http.send("GET", url, stream=True, netrc=True)
            with response:
                if response.status_code != HTTPStatus.OK:
                    raise DriverPackageError(
                        f"{redact(url)}: HTTP {response.status_code} ({response.reason})"
                    )
                expected = response.headers.get("Content-Length")
                if (
                    expected is not None
                    and expected.isdigit()
                    and int(expected) > local_files.PACKAGE.limit
                ):
                    raise DriverPackageError(
                        f"{redact(url)}: the server announces {expected} bytes, more than "
                        f"{local_files.PACKAGE.bound}; refused"
                    )
                validators = {
                    key: response.headers[header]
                    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified"))
                    if header in response.headers
                }
                reader = BodyReader(
                    response,
                    self.http.retry,
                    deadline=deadline,
                    limit=local_files.PACKAGE.limit,
                    what=f"GET {redact(url)}",
                )
                for chunk in reader.chunks():
                    hasher.update(chunk)
                    size += len(chunk)
                    _write(out, chunk)
        except BodyDeadlineError as exc:
            raise DriverPackageError(
                f"{exc} (bound: {self.http.retry.download_deadline:g} s)"
            ) from exc
        except TransientHTTPError as exc:
            raise DriverPackageError(str(exc), transient=exc.transient) from exc
        except (requests.RequestException, *BODY_ERRORS) as exc:
            raise DriverPackageError(f"{redact(url)}: {short_reason(exc)}", transient=True) from exc
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise DriverPackageError(
                f"{redact(url)}: download truncated: got {size} of {expected} bytes"
            )
        return hasher.hexdigest(), size, validators


def _write(out: BinaryIO, chunk: bytes) -> None:
    """A write into the cache that fails is the host's (a full disk), never the package's or
    the network's."""
    try:
        out.write(chunk)
    except OSError as exc:
        raise HostError(f"{out.name}: cannot write into the cache: {exc.strerror}") from exc


def _copy_local(source: Path, out: BinaryIO) -> tuple[str, int, dict[str, Any]]:
    """A file:// package copied into the cache: a regular file within local_files.PACKAGE."""
    hasher = hashlib.sha256()
    size = 0
    try:
        with local_files.open_regular(source, local_files.PACKAGE) as src:
            mtime_ns = os.fstat(src.fileno()).st_mtime_ns
            while chunk := src.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                if size > local_files.PACKAGE.limit:  # grew while it was read
                    raise DriverPackageError(
                        f"{source}: the package is larger than {local_files.PACKAGE.bound}; refused"
                    )
                _write(out, chunk)
    except local_files.LocalFileError as exc:
        raise DriverPackageError(str(exc)) from exc
    except OSError as exc:
        raise DriverPackageError(f"{source}: cannot read package: {exc.strerror}") from exc
    return hasher.hexdigest(), size, {"mtime_ns": mtime_ns}


@dataclass(frozen=True)
class BuildExclusive:
    """The kernels and architectures a package builds for, as its dkms.conf restricts them
    (None: any). DKMS matches with bash's `=~`: anywhere in the value, as re.search does."""

    kernel: str | None = None
    arch: str | None = None

    def refusal(self, kernel: str, arch: str) -> str | None:
        """Why DKMS would not build the package for this kernel, or None."""
        rules = (
            (EXCLUSIVE_KERNEL, self.kernel, "kernel", kernel),
            (EXCLUSIVE_ARCH, self.arch, "architecture", arch),
        )
        for name, pattern, what, value in rules:
            if pattern is not None and not re.search(pattern, value):
                return (
                    f'its dkms.conf builds only for a {what} matching {name}="{pattern}", '
                    f"and {value} does not match (DKMS skips it)"
                )
        return None


@dataclass(frozen=True)
class DriverSource:
    """What the package's dkms.conf says the build needs to know."""

    git_sha: str
    exclusive: BuildExclusive = field(default_factory=BuildExclusive)


EXCLUSIVE_KERNEL = "BUILD_EXCLUSIVE_KERNEL"
EXCLUSIVE_ARCH = "BUILD_EXCLUSIVE_ARCH"


def read_driver_source(package: Path, driver_version: str, name: str | None = None) -> DriverSource:
    """The git SHA and the kernel restrictions of ./usr/src/habanalabs-<version>/dkms.conf."""
    text, where = read_dkms_conf(package, driver_version, name)
    return DriverSource(parse_git_sha(text, where), parse_build_exclusive(text, where))


def read_git_sha(package: Path, driver_version: str, name: str | None = None) -> str:
    """KMD_LAST_GIT_SHA from ./usr/src/habanalabs-<version>/dkms.conf inside the RPM payload."""
    return parse_git_sha(*read_dkms_conf(package, driver_version, name))


def read_dkms_conf(package: Path, driver_version: str, name: str | None = None) -> tuple[str, str]:
    """./usr/src/habanalabs-<version>/dkms.conf's text inside the RPM payload, and where it is
    (for messages)."""
    shown = name or package.name
    member = f"usr/src/habanalabs-{driver_version}/dkms.conf"
    try:
        with rpmfile.open(str(package)) as rpm:
            names = {relative_name(m.name): m for m in rpm.getmembers()}
            if member not in names:
                found = sorted(n for n in names if n.endswith("dkms.conf"))
                where = f"; it has {', '.join(found)}" if found else ""
                raise DriverPackageError(f"{shown}: no ./{member} in the package{where}")
            handle = rpm.extractfile(names[member])
            text = handle.read().decode("utf-8", "replace")
    except DriverPackageError:
        raise
    except Exception as exc:  # rpmfile raises bare KeyError/EOFError/lzma errors on bad input
        raise DriverPackageError(
            f"{shown}: not a readable RPM ({type(exc).__name__}: {exc})"
        ) from exc
    return text, f"{shown}: ./{member}"


def _shell_value(raw: str) -> str:
    """A dkms.conf assignment's value, as the shell that sources it reads a simple one: one
    pair of enclosing quotes removed."""
    value = raw.strip()
    for quote in "\"'":
        if len(value) > 1 and value.startswith(quote) and value.endswith(quote):
            return value[1:-1]
    return value


def parse_build_exclusive(dkms_conf: str, where: str) -> BuildExclusive:
    """The last BUILD_EXCLUSIVE_KERNEL / _ARCH assignment of each (a later one wins, as in the
    shell); a value that is not a regular expression is an error naming it."""
    found: dict[str, str] = {}
    for line in dkms_conf.splitlines():
        name, equals, raw = line.strip().partition("=")
        if equals and name in (EXCLUSIVE_KERNEL, EXCLUSIVE_ARCH):
            found[name] = _shell_value(raw)
    for name, pattern in found.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise DriverPackageError(
                f"{where}: {name}={pattern!r} is not a regular expression ({exc})"
            ) from None
    return BuildExclusive(found.get(EXCLUSIVE_KERNEL) or None, found.get(EXCLUSIVE_ARCH) or None)


def parse_git_sha(dkms_conf: str, where: str) -> str:
    values = []
    for line in dkms_conf.splitlines():
        stripped = line.strip()
        if stripped.startswith("KMD_LAST_GIT_SHA="):
            values.append(stripped.split("=", 1)[1].strip().strip("\"'"))
    if not values:
        raise DriverPackageError(f"{where}: no KMD_LAST_GIT_SHA= line")
    if len(values) > 1:
        raise DriverPackageError(
            f"{where}: {len(values)} KMD_LAST_GIT_SHA= lines ({', '.join(values)}); expected one"
        )
    if not GIT_SHA_RE.match(values[0]):
        raise DriverPackageError(
            f"{where}: KMD_LAST_GIT_SHA={values[0]!r}; expected 7-40 lowercase hex digits"
        )
    return values[0]


def link_into(package: CachedPackage, directory: Path, name: str) -> Path:
    """Place a cached package in a build context: a hard link when possible, else a copy."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    target.unlink(missing_ok=True)
    try:
        os.link(package.path, target)
    except OSError:
        shutil.copyfile(package.path, target)
    return target


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write data to path whole or not at all (a temporary file beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    Path(tmp).replace(path)
