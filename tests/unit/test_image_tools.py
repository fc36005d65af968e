"""The flavour contract, read from exported images made of this host's real binaries."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from habana_tasks.config.flavours import KMM1, MINIMAL
from habana_tasks.verification.image_tools import RootFs, flavour_problems
from tests.fake_image import add_tools, tool_files

Change = Callable[[tarfile.TarFile], None]


def image(tmp_path: Path, tools: tuple[str, ...], *changes: Change, drop: str = "") -> Path:
    """A minimal image: the tools stage's output, a module under /opt, then `changes`."""
    path = tmp_path / "rootfs.tar"
    with tarfile.open(path, "w") as tar:
        staged = io.BytesIO()
        with tarfile.open(fileobj=staged, mode="w") as stage:
            add_tools(stage, tools)
        staged.seek(0)
        with tarfile.open(fileobj=staged) as stage:
            for member in stage.getmembers():
                if member.name == drop:
                    continue
                tar.addfile(member, stage.extractfile(member) if member.isfile() else None)
        add(tar, "opt/lib/modules/6.1.0-56-amd64/extra/habanalabs.ko", b"\x7fELF")
        for change in changes:
            change(tar)
    return path


def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def problems(path: Path, flavour: str = "minimal", has_base: bool = False) -> list[str]:
    with tarfile.open(path) as tar:
        return flavour_problems(tar, flavour, has_base)


def test_the_minimal_image_meets_its_contract(tmp_path: Path) -> None:
    assert problems(image(tmp_path, MINIMAL.tools)) == []


def test_the_kmm1_image_meets_its_contract_and_minimal_lacks_kmm1s_tools(tmp_path: Path) -> None:
    assert problems(image(tmp_path, KMM1.tools), "kmm1") == []
    found = problems(image(tmp_path, MINIMAL.tools), "kmm1")
    assert [p.split(":", 1)[0] for p in found] == ["modprobe", "depmod", "sleep"]
    assert "KMM 1.x" in found[0]


def test_a_tool_the_flavour_has_no_use_for_is_named(tmp_path: Path) -> None:
    """A package manager or a shell's friends are files outside /opt a flavour has no use for."""
    found = problems(image(tmp_path, (*MINIMAL.tools, "dpkg")))
    assert len(found) == 1
    assert found[0].startswith("files outside /opt that flavour minimal has no use for: ")
    assert "/usr/bin/dpkg" in found[0]


def test_a_missing_library_is_named_with_the_tool_that_needs_it(tmp_path: Path) -> None:
    libc = next(name for name, _, _ in tool_files(MINIMAL.tools) if "/libc.so" in name)
    found = problems(image(tmp_path, MINIMAL.tools, drop=libc))
    assert found and all("needs libc.so.6, absent from the image" in p for p in found)
    assert {p.split(":", 1)[0] for p in found} == {"sh", "mkdir", "cp"}


def test_a_missing_program_interpreter_is_named(tmp_path: Path) -> None:
    loader = next(name for name, _, _ in tool_files(MINIMAL.tools) if "ld-linux" in name)
    found = problems(image(tmp_path, MINIMAL.tools, drop=loader))
    assert any("program interpreter /lib64/ld-linux-x86-64.so.2 is absent" in p for p in found)


def test_sh_must_be_bin_sh_exactly(tmp_path: Path) -> None:
    """KMM runs /bin/sh by that path: without the bin -> usr/bin link there is none."""
    found = problems(image(tmp_path, MINIMAL.tools, drop="bin"))
    assert found[0].startswith("sh: absent from /bin/sh (the image)")


def test_a_tool_for_another_machine_or_not_an_executable_is_refused(tmp_path: Path) -> None:
    def fake_cp(tar: tarfile.TarFile) -> None:
        add(tar, "usr/bin/cp", b"not an ELF file", 0o755)

    found = problems(image(tmp_path, ("sh", "mkdir"), fake_cp))
    assert found == ["cp: /usr/bin/cp is not a readable ELF file (Magic number does not match)"]


def test_with_a_base_the_tools_must_come_from_it_and_other_files_are_its_own(
    tmp_path: Path,
) -> None:
    def base_files(tar: tarfile.TarFile) -> None:
        add(tar, "usr/bin/microdnf", b"#!/bin/sh\n", 0o755)
        add(tar, "etc/os-release", b"ID=ubi\n")

    assert problems(image(tmp_path, MINIMAL.tools, base_files), has_base=True) == []
    found = problems(image(tmp_path, ("sh", "mkdir"), base_files), has_base=True)
    assert found == [
        "cp: absent from the image's PATH (the base image); flavour minimal needs it for "
        "KMM 2.x (its image-extractor runs the image's /bin/sh, mkdir and cp)"
    ]


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ({"a": "b", "b": "a"}, None),  # a loop
        ({"a": "/usr/bin/sh"}, "usr/bin/sh"),  # absolute: the image's own root
        ({"a": "../../usr/bin/sh"}, "usr/bin/sh"),  # cannot climb above the root
        ({"a": "usr"}, None),  # a folder is not a file
    ],
)
def test_links_resolve_inside_the_image(
    tmp_path: Path, links: dict[str, str], expected: str | None
) -> None:
    def add_links(tar: tarfile.TarFile) -> None:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

    with tarfile.open(image(tmp_path, ("sh",), add_links)) as tar:
        assert RootFs.read(tar).resolve("a") == expected
