"""Files the tool reads from the user's disk: only regular files, each kind with a size bound, so
that a device, a FIFO or a huge file is refused by name before it can hold or exhaust a run."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from habana_tasks.core.errors import UsageError

MiB = 1 << 20


@dataclass(frozen=True)
class FileKind:
    """What a file is for (named in messages) and the most the tool will read of it."""

    what: str
    limit: int  # bytes
    text: str = "UTF-8 text"  # what its content must be, for read_text's message

    @property
    def bound(self) -> str:
        return format_size(self.limit)


# A library of thousands of pairs stays far below these; anything larger is a mistake.
VERSIONS_FILE = FileKind("versions file", 8 * MiB, "a UTF-8 TOML file")
# `kubectl get nodes -o json` of 10,000 nodes and more.
NODES_JSON = FileKind("nodes JSON", 256 * MiB, "UTF-8 JSON")
CERTIFICATE = FileKind("signing certificate", 1 * MiB)
PRIVATE_KEY = FileKind("signing key", 1 * MiB)
AUTH_FILE = FileKind("auth file", 4 * MiB)
NETRC = FileKind("netrc file", 1 * MiB)
COSIGN_KEY = FileKind("cosign private key", 64 * 1024)
COSIGN_PUBLIC_KEY = FileKind("cosign public key", 64 * 1024)
COSIGN_PASSWORD = FileKind("cosign password file", 4096)
# A run's report.json: about 1 KiB per pair; a batch of a 100,000-pair library stays below.
RUN_REPORT = FileKind("run report", 64 * MiB, "UTF-8 JSON")
KINDS = (
    VERSIONS_FILE,
    NODES_JSON,
    CERTIFICATE,
    PRIVATE_KEY,
    AUTH_FILE,
    NETRC,
    RUN_REPORT,
    COSIGN_KEY,
    COSIGN_PUBLIC_KEY,
    COSIGN_PASSWORD,
)
# A driver or firmware RPM: from a file:// URL, or the most a download may bring.
PACKAGE = FileKind("package", 4096 * MiB)


class LocalFileError(UsageError):
    """A local input is missing, not a regular file, or larger than its kind's bound (exit 2)."""


def format_size(size: int) -> str:
    return f"{size // MiB} MiB" if size % MiB == 0 else f"{size} bytes"


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, for the message; None for a regular file."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _refusal(path: Path, kind: FileKind, mode: int, size: int) -> str | None:
    """Why a file of this mode and size is not read as `kind`; None when it may be."""
    if (other := kind_of(mode)) is not None:
        return f"{path}: the {kind.what} is {other}; expected a regular file"
    if size > kind.limit:
        return f"{path}: the {kind.what} is larger than {kind.bound}; refused"
    return None


def open_regular(path: Path, kind: FileKind) -> BinaryIO:
    """The file, open for reading, once it is known to be a regular file within kind.limit.

    Opened non-blocking, so that a FIFO cannot hold the open, and checked on the open
    descriptor, so that what is read is what was checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot even be opened: say what it is
            info = os.stat(path)
            if why := _refusal(path, kind, info.st_mode, 0):
                raise LocalFileError(why) from exc
        raise LocalFileError(f"{path}: cannot read the {kind.what}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if why := _refusal(path, kind, info.st_mode, info.st_size):
        os.close(fd)
        raise LocalFileError(why)
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, kind: FileKind) -> bytes:
    """The file's content, at most kind.limit bytes (limit + 1 are read to notice growth)."""
    with open_regular(path, kind) as handle:
        data = handle.read(kind.limit + 1)
    if len(data) > kind.limit:  # grew while it was read
        raise LocalFileError(f"{path}: the {kind.what} is larger than {kind.bound}; refused")
    return data


def read_text(path: Path, kind: FileKind) -> str:
    """read_bytes, decoded as UTF-8; anything else is refused naming the first bad byte."""
    data = read_bytes(path, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise LocalFileError(
            f"{path}: the {kind.what} is not UTF-8 text ({where}); expected {kind.text}"
        ) from exc


def check_optional(path: Path, kind: FileKind) -> None:
    """A file the tool may read later (an auth file, ~/.netrc): absent is fine, anything else
    it could not read safely is refused now, before any request."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LocalFileError(f"{path}: cannot read the {kind.what}: {exc.strerror}") from exc
    if why := _refusal(path, kind, info.st_mode, info.st_size):
        raise LocalFileError(why)
