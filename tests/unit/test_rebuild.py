"""verify-rebuild's comparison: what it names when a rebuild differs (the rebuild itself runs
for real in tests/integration/test_images.py)."""

from __future__ import annotations

import gzip
import io
import tarfile

from habana_tasks.build.rebuild import config_differences, file_differences, layer_files
from habana_tasks.verification.signing import MAGIC, SIGNATURE_INFO


def layer(files: dict[str, tuple[bytes, int, int]]) -> bytes:
    """A gzip layer of (content, mode, mtime) per path."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, (data, mode, mtime) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, mtime
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


def signed(content: bytes, signature: bytes) -> bytes:
    info = SIGNATURE_INFO.pack(0, 0, 2, 0, 0, len(signature))
    return content + signature + info + MAGIC


def test_equal_layers_have_no_difference() -> None:
    files = {"opt/a": (b"x", 0o644, 0)}
    assert file_differences(layer_files(layer(files)), layer_files(layer(files))) == []


def test_each_kind_of_difference_is_named_per_file() -> None:
    published = layer_files(
        layer({"opt/a": (b"x", 0o644, 0), "opt/b": (b"y", 0o644, 0), "opt/gone": (b"", 0o644, 0)})
    )
    rebuilt = layer_files(
        layer({"opt/a": (b"x", 0o755, 7), "opt/b": (b"z", 0o644, 0), "opt/new": (b"", 0o644, 0)})
    )
    assert file_differences(published, rebuilt) == [
        "/opt/a: mode, mtime",
        "/opt/b: content",
        "/opt/gone: only in the published image",
        "/opt/new: only in the rebuild",
    ]


def test_a_module_differing_only_in_its_signature_says_so() -> None:
    path = "opt/lib/modules/k/extra/habanalabs.ko"
    published = layer_files(layer({path: (signed(b"\x7fELF", b"sig-1"), 0o644, 0)}))
    rebuilt = layer_files(layer({path: (signed(b"\x7fELF", b"sig-2"), 0o644, 0)}))
    (line,) = file_differences(published, rebuilt, {path: True})
    assert line == f"/{path}: module signature only (not deterministic for this key type)"
    (other,) = file_differences(published, rebuilt, {path: False})
    assert other == f"/{path}: content"


def test_config_differences_name_labels_and_fields() -> None:
    published = {
        "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"a": "1", "b": "2"}, "User": "1001"},
        "rootfs": {"diff_ids": ["x"]},
    }
    rebuilt = {
        "created": "2026-01-01T00:00:00Z",
        "config": {"Labels": {"a": "1", "b": "3"}, "User": "0"},
        "rootfs": {"diff_ids": ["y"]},  # layers are compared file by file, not here
    }
    assert config_differences(published, rebuilt) == [
        "label b: '2' -> '3'",
        "config.User",
        "created",
    ]


def test_the_first_differing_history_entry_is_named_field_by_field() -> None:
    step = {"created": "1970-01-01T00:00:00Z", "created_by": "COPY dir:1 in /"}
    published = {"history": [step, {**step, "comment": "FROM aaa"}]}
    rebuilt = {"history": [step, {**step, "comment": "FROM bbb"}]}
    assert config_differences(published, rebuilt) == [
        "history[1].comment: 'FROM aaa' -> 'FROM bbb'"
    ]
