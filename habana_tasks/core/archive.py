"""Safe extraction of an image's tar on every Python the project supports.

`tarfile`'s extraction filters exist only from Python 3.11.4 (Debian 12 ships 3.11.2), and their
"data" filter refuses absolute symlinks, which KMM's in-tree module convention needs
(`/opt/lib/modules/<release>/host -> /host/lib/modules/<release>`). So extraction is done here:
every path stays under the destination, nothing is ever written through a symlink, links are kept
as links, device nodes are left out, and set-id bits are dropped.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from habana_tasks.core.errors import CheckError

SAFE_MODE_BITS = 0o777  # no setuid, setgid or sticky bit on the host


def relative_name(name: str) -> str:
    """An archive member's name without its leading "./" and "/" prefixes: only those (`lstrip`
    would strip characters, and a hidden "./.config" would lose its dot)."""
    while name.startswith(("./", "/")):
        name = name.removeprefix(".").removeprefix("/")
    return name


def member_path(name: str) -> PurePosixPath | None:
    """The member's path relative to the archive root; None for the root itself."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if ".." in parts:
        raise CheckError(f"tar member {name!r} leaves the archive root ('..')")
    return PurePosixPath(*parts) if parts else None


def _inside(destination: Path, relative: PurePosixPath) -> Path:
    """The on-disk path, refusing one whose parent directories pass through a symlink."""
    target = destination.joinpath(*relative.parts)
    parent = target.parent
    if os.path.realpath(parent) != str(parent):
        raise CheckError(f"tar member {str(relative)!r} would be written through a symlink")
    return target


def extract(tar: tarfile.TarFile, destination: Path, members: Iterable[tarfile.TarInfo]) -> None:
    """Extract the given members of an open archive under destination (which must exist)."""
    destination = Path(os.path.realpath(destination))
    for member in members:
        relative = member_path(member.name)
        if relative is None:
            continue
        target = _inside(destination, relative)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod((member.mode & SAFE_MODE_BITS) | 0o700)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        if member.issym():
            # Kept as a link and never followed: later members are checked by _inside.
            target.symlink_to(member.linkname)
        elif member.islnk():
            source_rel = member_path(member.linkname)
            if source_rel is None:
                raise CheckError(f"tar member {member.name!r} is a hard link to the archive root")
            source = _inside(destination, source_rel)
            if not source.is_file() or source.is_symlink():
                raise CheckError(
                    f"tar member {member.name!r} links to {member.linkname!r}, "
                    "which is not a file extracted before it"
                )
            shutil.copyfile(source, target)
            target.chmod(source.stat().st_mode & SAFE_MODE_BITS)
        elif member.isfile():
            stream = tar.extractfile(member)
            if stream is None:
                raise CheckError(f"tar member {member.name!r} has no readable content")
            with stream, target.open("wb") as out:
                shutil.copyfileobj(stream, out)
            target.chmod(member.mode & SAFE_MODE_BITS)
        # Device nodes and FIFOs are not needed to inspect a driver image: left out.
