"""Root filesystems laid out as the Dockerfile's tools stage lays them out, made from this host's
own binaries and their libraries (ldd), for tests that need an image without building one.
The real stage is exercised by every integration build (tests/integration/test_images.py)."""

from __future__ import annotations

import functools
import io
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

from habana_tasks.core.process import ProcessRunner
from habana_tasks.engine.isolation import shared_libraries

LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@functools.cache
def tool_files(tools: tuple[str, ...]) -> tuple[tuple[str, bytes, int], ...]:
    """(path in the image, content, mode) of each tool (in usr/bin) and library it loads. A
    tool this host lacks (kmod's, before scripts/install-deps) is coreutils' `true` under its
    name: what reads these images looks at files and the libraries they load, and runs none."""
    files: dict[str, tuple[bytes, int]] = {}
    for tool in tools:
        path = shutil.which(tool) or shutil.which("true")
        assert path, "coreutils' true is not on this host's PATH"
        files[f"usr/bin/{tool}"] = (Path(path).resolve().read_bytes(), 0o755)
        for library in shared_libraries(ProcessRunner(), Path(path)):
            name = str(library).removeprefix("/")
            first, _, rest = name.partition("/")
            name = f"{LINKS[first]}/{rest}" if first in LINKS else name
            files.setdefault(name, (Path(library).resolve().read_bytes(), 0o755))
    return tuple((name, data, mode) for name, (data, mode) in sorted(files.items()))


def add_tools(tar: tarfile.TarFile, tools: Iterable[str]) -> None:
    """The tools stage's output: the usr-merge links, then each file with its folders."""
    for link, target in LINKS.items():
        info = tarfile.TarInfo(link)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    folders: set[str] = set()
    for name, data, mode in tool_files(tuple(tools)):
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in folders:
                folders.add(folder)
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
