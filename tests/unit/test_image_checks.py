from __future__ import annotations

from dataclasses import replace

from habana_tasks.verification.image_checks import (
    ModuleFacts,
    dependency_problems,
    firmware_problems,
    listing_problems,
    parse_modinfo,
    parse_versions,
    show_depends_problem,
    vermagic_problem,
)
from habana_tasks.verification.kernel_modules import VMLINUX, Export, KernelModules


def test_vermagic_must_name_exactly_the_target_release() -> None:
    good = "6.1.0-56-amd64 SMP preempt mod_unload modversions "
    assert vermagic_problem("habanalabs", good, "6.1.0-56-amd64") is None
    assert vermagic_problem("habanalabs", good.replace("56", "55"), "6.1.0-56-amd64") == (
        "habanalabs: vermagic names kernel '6.1.0-55-amd64', not '6.1.0-56-amd64'"
    )
    # A prefix is not enough: 6.1.0-5 must not accept a module for 6.1.0-56.
    assert vermagic_problem("m", good, "6.1.0-5") is not None
    assert vermagic_problem("m", "", "6.1.0-56-amd64") == (
        "m: vermagic names kernel 'nothing', not '6.1.0-56-amd64'"
    )


def test_show_depends_must_resolve_the_module_itself() -> None:
    out = "insmod /x/opt/lib/modules/6.1.0-56-amd64/extra/habanalabs.ko \n"
    assert show_depends_problem("habanalabs", out) is None
    problem = show_depends_problem("habanalabs", "modprobe: FATAL: Module habanalabs not found")
    assert (
        problem and "did not resolve it (modprobe: FATAL: Module habanalabs not found)" in problem
    )


R = "6.1.0-56-amd64"
KERNEL = KernelModules(
    release=R,
    modules={
        "ib_core": "kernel/drivers/infiniband/core/ib_core.ko",
        "ib_uverbs": "kernel/drivers/infiniband/core/ib_uverbs.ko",
    },
    builtin=frozenset({"hwmon"}),
    symbols={
        "module_layout": Export(0x11111111, VMLINUX),
        "ib_register_client": Export(0xE2FFCD05, "ib_core"),
        "uverbs_destroy_def_handler": Export(0x60D5B773, "ib_uverbs"),
    },
    source="toolkit@sha256:1",
)
STANDIN = ModuleFacts(
    "habana_example_ib",
    f"{R} SMP mod_unload modversions",
    depends=("ib_core", "ib_uverbs"),
    imports=(
        ("module_layout", 0x11111111),
        ("ib_register_client", 0xE2FFCD05),
        ("uverbs_destroy_def_handler", 0x60D5B773),
    ),
)


def test_in_tree_dependencies_resolve_to_modules_of_the_target_kernel() -> None:
    assert dependency_problems([STANDIN], KERNEL) == []


def test_each_kind_of_unresolved_dependency_is_named() -> None:
    broken = replace(STANDIN, depends=("ib_core", "hwmon", "mlx5_core"))
    assert dependency_problems([broken], KERNEL) == [
        f"habana_example_ib: depends on hwmon, which {R} has built in, not as a module",
        f"habana_example_ib: depends on mlx5_core, which is neither in the image nor a module "
        f"of {R}",
    ]
    no_index = replace(KERNEL, modules={}, has_index=False)
    assert dependency_problems([STANDIN], no_index)[0] == (
        "habana_example_ib: depends on ib_core, but toolkit@sha256:1 has no "
        f"/lib/modules/{R}/modules.dep to find it in"
    )


def test_symbol_versions_must_match_the_target_kernel() -> None:
    crc = replace(STANDIN, imports=(*STANDIN.imports[:1], ("ib_register_client", 0xDEADBEEF)))
    assert dependency_problems([crc], KERNEL) == [
        "habana_example_ib: disagrees about the version of ib_register_client "
        f"(e.g. ib_register_client: 0xdeadbeef here, 0xe2ffcd05 in {R}'s ib_core)"
    ]
    unknown = replace(STANDIN, imports=(*STANDIN.imports, *((f"s{i}", 1) for i in range(5))))
    assert dependency_problems([unknown], KERNEL) == [
        f"habana_example_ib: needs s0, s1, s2 and 2 more, exported by neither the image nor {R}"
    ]
    no_symvers = replace(KERNEL, symbols={}, has_symvers=False)
    assert "cannot check its symbol versions" in dependency_problems([STANDIN], no_symvers)[0]


def test_modules_of_the_image_resolve_each_other() -> None:
    core = ModuleFacts("habanalabs_cn", R, exports=frozenset({"hbl_cn_register"}))
    nic = ModuleFacts(
        "habanalabs_en", R, depends=("habanalabs_cn",), imports=(("hbl_cn_register", 7),)
    )
    assert dependency_problems([core, nic], KERNEL) == []
    assert dependency_problems([nic], KERNEL)[0].startswith(
        "habanalabs_en: depends on habanalabs_cn, which is neither in the image"
    )


def test_listed_modules_must_be_built_and_built_modules_listed() -> None:
    assert (
        listing_problems(
            ["habanalabs", "habana_example_ib"], ["habana_example_ib", "habanalabs"], R
        )
        == []
    )
    assert listing_problems(
        ["habanalabs", "habanalabs_ib"], ["habanalabs", "habanalabs_cn"], R
    ) == [
        f"habanalabs_ib: no habanalabs_ib.ko under /opt/lib/modules/{R} (listed in modules)",
        "the package also built habanalabs_cn.ko, which modules does not list: KMM would never "
        "load it (add it to modules, in load order)",
    ]


def test_every_declared_firmware_file_is_shipped() -> None:
    module = ModuleFacts("m", R, firmware=("habanalabs/gaudi/a.bin", "habanalabs/gaudi/b.bin"))
    members = frozenset({"opt/lib/firmware/", "opt/lib/firmware/habanalabs/gaudi/a.bin.xz"})
    assert firmware_problems([module], members, expect_firmware=True) == [
        "m: declares firmware habanalabs/gaudi/b.bin, not under /opt/lib/firmware"
    ]
    assert firmware_problems([module], members, expect_firmware=False) == []
    assert firmware_problems([module], frozenset({"opt/lib/firmware/"}), True) == [
        "a firmware package was given but /opt/lib/firmware is empty"
    ]


def test_a_module_resolved_to_its_in_tree_namesake_is_refused() -> None:
    out = "insmod /x/opt/lib/modules/6.1/host/kernel/drivers/accel/habanalabs/habanalabs.ko.xz \n"
    assert show_depends_problem("habanalabs", out) == (
        "habanalabs: modprobe resolves it to the kernel's own "
        "kernel/drivers/accel/habanalabs/habanalabs.ko.xz, not the image's"
    )
    chain = "insmod /o/host/kernel/ib_core.ko \ninsmod /o/extra/habana_example_ib.ko \n"
    assert show_depends_problem("habana_example_ib", chain) is None


def test_kmod_outputs_are_parsed() -> None:
    info = parse_modinfo(
        "filename:       /x/habana_example_ib.ko\nfirmware:       a/b.bin\nfirmware:       c\n"
        "depends:        ib_core,ib_uverbs\nvermagic:       6.1.0-56-amd64 SMP mod_unload \n"
    )
    assert info["depends"] == ["ib_core,ib_uverbs"] and info["firmware"] == ["a/b.bin", "c"]
    assert info["vermagic"] == ["6.1.0-56-amd64 SMP mod_unload"]
    assert parse_versions("0xe2ffcd05\tib_register_client\nnoise\n0xzz\tbad\n") == [
        ("ib_register_client", 0xE2FFCD05)
    ]
