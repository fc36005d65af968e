"""Safe extraction on every supported Python (Debian 12's 3.11.2 has no tarfile filters)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from habana_tasks.core import archive
from habana_tasks.core.errors import CheckError


def make_tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in entries:
            content = data.get(info.name)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


def extract(tmp_path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes | None]) -> Path:
    tar_path = make_tar(tmp_path / "image.tar", entries, data)
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(tar_path) as tar:
        archive.extract(tar, out, tar.getmembers())
    return out


def test_files_links_and_kmm_host_symlink_are_kept(tmp_path: Path) -> None:
    out = extract(
        tmp_path,
        [
            entry("./opt/", tarfile.DIRTYPE, 0o755),
            entry("./opt/m.ko", mode=0o4755),
            entry("./opt/copy.ko", tarfile.LNKTYPE, link="./opt/m.ko"),
            # KMM's in-tree convention: an absolute link to the node's modules, never followed.
            entry("./opt/host", tarfile.SYMTYPE, link="/host/lib/modules/6.1.0-55-amd64"),
            entry("./dev/console", tarfile.CHRTYPE),
        ],
        {"./opt/m.ko": b"module", "./opt/copy.ko": None},
    )
    assert (out / "opt" / "m.ko").read_bytes() == b"module"
    assert (out / "opt" / "m.ko").stat().st_mode & 0o7777 == 0o755  # no setuid on the host
    assert (out / "opt" / "copy.ko").read_bytes() == b"module"
    assert str((out / "opt" / "host").readlink()) == "/host/lib/modules/6.1.0-55-amd64"
    assert not (out / "dev" / "console").exists()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("opt/../../escape")], "leaves the archive root"),
        (
            [entry("opt/up", tarfile.SYMTYPE, link="/tmp"), entry("opt/up/written")],
            "would be written through a symlink",
        ),
        ([entry("opt/hard", tarfile.LNKTYPE, link="etc/passwd")], "not a file extracted before it"),
    ],
    ids=["dotdot", "through-symlink", "hardlink-outside"],
)
def test_hostile_members_are_refused(
    tmp_path: Path, entries: list[tarfile.TarInfo], message: str
) -> None:
    data: dict[str, bytes | None] = {e.name: b"x" for e in entries if e.type == tarfile.REGTYPE}
    with pytest.raises(CheckError, match=message):
        extract(tmp_path, entries, data)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/written").exists()


@pytest.mark.parametrize(
    ("name", "relative"),
    [
        ("./.config", ".config"),  # lstrip("./") would give "config"
        ("./..hidden", "..hidden"),
        ("/opt/lib", "opt/lib"),
        ("././opt/.x", "opt/.x"),
        ("./", ""),
        ("opt/./x", "opt/./x"),
    ],
)
def test_only_the_leading_prefixes_are_removed(name: str, relative: str) -> None:
    assert archive.relative_name(name) == relative
