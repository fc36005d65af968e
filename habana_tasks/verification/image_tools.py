"""The image's flavour contract, read from its exported root filesystem (nothing is run): every
tool the flavour names is an x86_64 executable whose program interpreter and shared libraries
resolve inside the image, and, without a base image, nothing lies outside /opt but those tools,
their libraries and the usr-merge links (so no package manager, no shell a flavour does not
need). The load test then runs them for real, in the guest, as KMM does.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from habana_tasks.config.fields import names_shown
from habana_tasks.config.flavours import FLAVOURS
from habana_tasks.core import archive

# Where a container's PATH finds a command, in order; KMM runs /bin/sh by that exact path.
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
EXACT_PATHS = {"sh": "bin/sh"}
# The dynamic loader's own search path without ld.so.cache: Debian's multiarch directories,
# then RHEL's lib64, then the plain ones.
LIBRARY_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)
EM_X86_64 = "EM_X86_64"
# The usr-merge links the tools stage writes (as distributions lay out their root).
USR_MERGE = frozenset({"bin", "sbin", "lib", "lib64"})
MAX_LINKS = 40  # symbolic links followed while resolving one path


@dataclass(frozen=True)
class RootFs:
    """The exported image as a map of paths (no leading '/') to tar members, with link
    resolution inside the image: an absolute link target means the image's own root."""

    members: Mapping[str, tarfile.TarInfo]
    tar: tarfile.TarFile

    @classmethod
    def read(cls, tar: tarfile.TarFile) -> RootFs:
        return cls({archive.relative_name(m.name): m for m in tar.getmembers()}, tar)

    def resolve(self, path: str, trail: set[str] | None = None) -> str | None:
        """The path of the regular file `path` names, following links (each link passed is
        added to `trail`); None if it names none."""
        parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            current = "/".join([*done, part])
            member = self.members.get(current)
            if member is None:
                return None
            if member.issym():
                hops += 1
                if hops > MAX_LINKS:
                    return None
                if trail is not None:
                    trail.add(current)
                target = member.linkname
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.strip("/").split("/") if p not in ("", ".")] + parts
                continue
            if member.islnk():
                current = archive.relative_name(member.linkname)
                member = self.members.get(current)
                if member is None:
                    return None
            if parts and not member.isdir():
                return None
            done = current.split("/")
        return "/".join(done) if (m := self.members.get("/".join(done))) and m.isfile() else None

    def read_bytes(self, path: str) -> bytes:
        member = self.members[path]
        handle = self.tar.extractfile(member)
        return handle.read() if handle else b""


def find_tool(root: RootFs, tool: str, trail: set[str] | None = None) -> str | None:
    """Where a container finds the command: /bin/sh by that path, the others through PATH. The
    links on the way to the file found are added to `trail`."""
    candidates = [EXACT_PATHS[tool]] if tool in EXACT_PATHS else [f"{d}/{tool}" for d in PATH_DIRS]
    for candidate in candidates:
        passed: set[str] = set()
        if found := root.resolve(candidate, passed):
            if trail is not None:
                trail |= passed
            return found
    return None


def _dynamic(data: bytes, what: str) -> tuple[str | None, list[str], list[str]]:
    """(interpreter, needed, runpath) of an x86_64 ELF file; raises ValueError naming why not."""
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        interpreter = None
        for segment in elf.iter_segments():
            if isinstance(segment, InterpSegment):
                interpreter = segment.get_interp_name()
        needed: list[str] = []
        runpath: list[str] = []
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    # pyelftools names a tag's string after the tag (needed, runpath, rpath).
                    kind = str(tag.entry.d_tag)
                    if kind == "DT_NEEDED":
                        needed.append(str(getattr(tag, "needed", "")))
                    elif kind in ("DT_RUNPATH", "DT_RPATH"):
                        value = getattr(tag, kind.removeprefix("DT_").lower(), "")
                        runpath.extend(str(value).split(":"))
    except (ELFError, ValueError, KeyError) as exc:
        raise ValueError(f"{what} is not a readable ELF file ({exc})") from exc
    if machine != EM_X86_64:
        raise ValueError(f"{what} is built for {machine}, not x86_64")
    return interpreter, needed, runpath


@dataclass
class Closure:
    """What one tool needs inside the image, and what keeps it from running there."""

    problems: list[str]
    used: set[str]  # files and links the tool, its interpreter and its libraries take


def closure(root: RootFs, tool: str, path: str) -> Closure:
    """The tool at `path` as the program loader sees it: interpreter and libraries, transitively."""
    found = Closure([], {path})
    queue = [(path, f"/{path}")]
    seen: set[str] = set()
    while queue:
        current, shown = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        data = root.read_bytes(current)
        if data.startswith(b"#!"):
            host = data[2:].split(b"\n", 1)[0].strip().split(b" ")[0].decode("utf-8", "replace")
            if (script_host := root.resolve(host, found.used)) is None:
                found.problems.append(f"{tool}: {shown} is a script for {host}, absent")
            else:
                queue.append((script_host, host))
            continue
        try:
            interpreter, needed, runpath = _dynamic(data, shown)
        except ValueError as exc:
            found.problems.append(f"{tool}: {exc}")
            continue
        if interpreter is not None:
            if (loader := root.resolve(interpreter, found.used)) is None:
                found.problems.append(f"{tool}: its program interpreter {interpreter} is absent")
            else:
                queue.append((loader, interpreter))
        origin = posixpath.dirname(current)
        dirs = [d.replace("$ORIGIN", "/" + origin).strip("/") for d in runpath if d]
        for name in needed:
            library = next(
                (
                    hit
                    for d in (*dirs, *LIBRARY_DIRS)
                    if (hit := root.resolve(f"{d}/{name}", found.used))
                ),
                None,
            )
            if library is None:
                found.problems.append(f"{tool}: {shown} needs {name}, absent from the image")
            else:
                queue.append((library, f"/{library}"))
    found.used |= seen
    return found


def flavour_problems(tar: tarfile.TarFile, flavour: str, has_base: bool) -> list[str]:
    """Every way the image misses its flavour's contract, one line each."""
    root = RootFs.read(tar)
    wanted = FLAVOURS[flavour]
    problems: list[str] = []
    used: set[str] = set()
    for tool in wanted.tools:
        trail: set[str] = set()
        path = find_tool(root, tool, trail)
        if path is None:
            where = f"/{EXACT_PATHS[tool]}" if tool in EXACT_PATHS else "the image's PATH"
            source = "the base image" if has_base else "the image"
            problems.append(
                f"{tool}: absent from {where} ({source}); flavour {flavour} needs it for "
                f"{wanted.serves}"
            )
            continue
        needs = closure(root, tool, path)
        problems += needs.problems
        used |= trail | needs.used
    if not has_base:
        extra = sorted(
            name
            for name, member in root.members.items()
            if name
            and name != "opt"
            and not name.startswith("opt/")
            and not member.isdir()
            and name not in used
            and not (name in USR_MERGE and member.issym())
        )
        if extra:
            shown = names_shown([f"/{name}" for name in extra])
            problems.append(f"files outside /opt that flavour {flavour} has no use for: {shown}")
    return problems
