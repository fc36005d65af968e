"""An initramfs made from root filesystems (tars), each under its own prefix: newc cpio out, no
extraction. Writing the archive directly keeps device nodes (/dev/console) and ownership
without root.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from habana_tasks.core.archive import relative_name

TRAILER = "TRAILER!!!"


def _header(
    ino: int,
    mode: int,
    uid: int,
    gid: int,
    mtime: int,
    size: int,
    name: str,
    rdev: tuple[int, int] = (0, 0),
    nlink: int = 1,
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = b"070701" + b"".join(f"{v & 0xFFFFFFFF:08X}".encode() for v in fields) + encoded
    return head + b"\0" * (-len(head) % 4)


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.names: set[str] = set()

    def add(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        owner: tuple[int, int, int] = (0, 0, 0),
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        """owner is (uid, gid, mtime)."""
        uid, gid, mtime = owner
        name = relative_name(name) or "."
        if name in self.names:
            return
        self.names.add(name)
        self.out.write(_header(self.ino, mode, uid, gid, mtime, len(data), name, rdev))
        self.out.write(data + b"\0" * (-len(data) % 4))
        self.ino += 1

    def close(self) -> None:
        self.out.write(_header(0, 0, 0, 0, 0, 0, TRAILER, nlink=1))


def rootfs_to_cpio(
    sources: Sequence[tuple[Path, str]], output: Path, extra: dict[str, tuple[int, bytes]]
) -> int:
    """One cpio of `sources` (tar, prefix: "" for the root), adding `extra` files (path ->
    mode, data) and their parent folders; an extra file wins over a tar's file of the same
    path, and an earlier source over a later one.

    Returns the archive size in bytes.
    """
    with output.open("wb") as out:
        writer = CpioWriter(out)
        for path, (mode, data) in extra.items():
            _parents(writer, path)
            writer.add(path, stat.S_IFREG | mode, data)
        for folder in ("dev", "proc", "sys", "tmp"):
            writer.add(folder, stat.S_IFDIR | (0o1777 if folder == "tmp" else 0o755))
        writer.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        for tar_path, prefix in sources:
            with tarfile.open(tar_path) as tar:
                if prefix:
                    _parents(writer, f"{prefix}/x")
                _add_members(writer, tar, prefix)
        writer.close()
    return output.stat().st_size


def _parents(writer: CpioWriter, path: str) -> None:
    parents = path.strip("/").split("/")[:-1]
    for depth in range(1, len(parents) + 1):
        writer.add("/".join(parents[:depth]), stat.S_IFDIR | 0o755)


def _add_members(writer: CpioWriter, tar: tarfile.TarFile, prefix: str) -> None:
    for member in tar.getmembers():
        name = relative_name(member.name)
        name = f"{prefix}/{name}" if prefix and name else (prefix or name)
        common = (member.uid, member.gid, int(member.mtime))
        perm = member.mode & 0o7777
        if member.isdir():
            writer.add(name, stat.S_IFDIR | perm, owner=common)
        elif member.issym():
            writer.add(name, stat.S_IFLNK | 0o777, member.linkname.encode(), owner=common)
        elif member.islnk():
            # A hard link becomes a copy: simpler than newc's nlink bookkeeping, same bytes.
            source = tar.extractfile(member.linkname)
            data = source.read() if source else b""
            writer.add(name, stat.S_IFREG | perm, data, owner=common)
        elif member.isfile():
            handle = tar.extractfile(member)
            writer.add(name, stat.S_IFREG | perm, handle.read() if handle else b"", owner=common)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            writer.add(name, kind | perm, rdev=(member.devmajor, member.devminor), owner=common)
