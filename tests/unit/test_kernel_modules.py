from __future__ import annotations

import io
import tarfile
from pathlib import Path

from habana_tasks.verification.kernel_modules import (
    VMLINUX,
    Export,
    module_name,
    parse_builtin,
    parse_modules_dep,
    parse_symvers,
)
from habana_tasks.verification.load_testing import in_tree_closure

R = "6.1.0-56-amd64"


def test_module_names_are_what_modprobe_calls_them() -> None:
    assert module_name("kernel/drivers/infiniband/core/ib_core.ko") == "ib_core"
    assert module_name("kernel/fs/x/snd-hda-intel.ko.xz") == "snd_hda_intel"
    assert module_name("extra/habanalabs.ko.zst") == "habanalabs"


def test_kernel_indexes_are_parsed() -> None:
    dep = (
        "kernel/drivers/infiniband/core/ib_core.ko:\n"
        "kernel/drivers/infiniband/core/ib_uverbs.ko: kernel/drivers/infiniband/core/ib_core.ko\n"
    )
    assert parse_modules_dep(dep) == {
        "ib_core": "kernel/drivers/infiniband/core/ib_core.ko",
        "ib_uverbs": "kernel/drivers/infiniband/core/ib_uverbs.ko",
    }
    assert parse_builtin("kernel/drivers/hwmon/hwmon.ko\n\n") == frozenset({"hwmon"})
    symvers = (
        "0xe2ffcd05\tib_register_client\tdrivers/infiniband/core/ib_core\tEXPORT_SYMBOL\t\n"
        "0x11111111\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x00000000\tsym_ns\tdrivers/x/y-z\tEXPORT_SYMBOL_GPL\tNS\n"
        "garbage\n"
    )
    assert parse_symvers(symvers) == {
        "ib_register_client": Export(0xE2FFCD05, "ib_core"),
        "module_layout": Export(0x11111111, VMLINUX),
        "sym_ns": Export(0, "y_z"),
    }


def test_the_node_closure_is_what_the_image_reaches_through_host(tmp_path: Path) -> None:
    dep = (
        b"extra/habana_example_ib.ko: host/kernel/drivers/infiniband/core/ib_uverbs.ko "
        b"host/kernel/drivers/infiniband/core/ib_core.ko\n"
        b"extra/habanalabs.ko:\n"
        b"host/kernel/drivers/net/big.ko: host/kernel/drivers/net/bigger.ko\n"
    )
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo(f"opt/lib/modules/{R}/modules.dep")
        info.size = len(dep)
        tar.addfile(info, io.BytesIO(dep))
    assert in_tree_closure(rootfs, R) == (
        "kernel/drivers/infiniband/core/ib_core.ko",
        "kernel/drivers/infiniband/core/ib_uverbs.ko",
    )
    assert in_tree_closure(rootfs, "6.1.0-55-amd64") == ()
