from __future__ import annotations

from habana_tasks.image_checks import show_depends_problem, vermagic_problem


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
