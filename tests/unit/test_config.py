from __future__ import annotations

from pathlib import Path

import pytest

from habana_tasks.config import sections, targets, versions_file
from habana_tasks.config.kernel_release import derive_arch, derive_rhel_version
from habana_tasks.config.tags import image_tag, tag_problem
from habana_tasks.core.errors import ConfigError, UsageError
from tests.versions_text import GOOD, load_text, problems_of

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_versions_file_is_valid() -> None:
    cfg = versions_file.load(ROOT / "versions.toml")
    (target,) = cfg.targets
    assert target.tag == "1.6.0-439-4.18.0-372.19.1.el8_6.x86_64"
    assert target.base_image is None  # no [base]: the image starts from scratch
    assert target.flavour == "minimal"
    assert target.toolkit_image == "ghcr.io/smgglrs/driver-toolkit:4.18.0-372.19.1.el8_6.x86_64"
    assert target.package_url.endswith("/rhel/8/8.6/habanalabs-1.6.0-439.el8.noarch.rpm")
    assert target.firmware_url and target.firmware_url.endswith("-1.6.0-439.el8.x86_64.rpm")


def test_example_versions_file_is_valid() -> None:
    cfg = versions_file.load(ROOT / "examples/local/versions.toml")
    assert [(t.kernel, t.driver) for t in cfg.targets] == [
        ("6.1.0-55-amd64", "6.1.0-1"),
        ("6.1.0-56-amd64", "6.1.0-1"),
        ("6.12.117+deb13-amd64", "6.12.0-1"),
    ]
    assert cfg.targets[2].tag == "6.12.0-1-6.12.117_deb13-amd64"
    assert {t.arch for t in cfg.targets} == {"x86_64"}
    assert cfg.insecure_registries == {"127.0.0.1:5055"}


def test_one_kernel_carries_several_drivers(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD)
    assert [t.driver for t in cfg.targets] == ["1.6.0-439", "1.7.0-1"]
    assert cfg.targets[0].rhel_version == "8.6"
    assert cfg.targets[0].package_url == (
        "https://vault.example.com/8/habanalabs-1.6.0-439.el8.noarch.rpm"
    )
    assert cfg.select(driver="1.7.0-1")[0].tag == "1.7.0-1-4.18.0-372.19.1.el8_6.x86_64"


def test_select_unknown_kernel_suggests_the_close_one(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD)
    with pytest.raises(UsageError) as info:
        cfg.select(kernel="4.18.0-372.19.1.el8_6.x86_6")
    assert "no kernels entry with kernel '4.18.0-372.19.1.el8_6.x86_6'" in str(info.value)
    assert "did you mean '4.18.0-372.19.1.el8_6.x86_64'" in str(info.value)


@pytest.mark.parametrize(
    ("release", "arch", "rhel"),
    [
        ("4.18.0-372.19.1.el8_6.x86_64", "x86_64", "8.6"),
        ("5.14.0-284.30.1.el9_2.aarch64+64k", "aarch64", "9.2"),
        ("5.14.0-284.el9.ppc64le", "ppc64le", "9"),
        ("6.1.0-56-amd64", "x86_64", None),
        ("6.1.0-56-cloud-arm64", "aarch64", None),
        ("6.1.0-56-rt-amd64", "x86_64", None),
        ("6.8.0-40-generic", None, None),
    ],
)
def test_release_derivations(release: str, arch: str | None, rhel: str | None) -> None:
    assert derive_arch(release) == arch
    assert derive_rhel_version(release) == rhel


def test_tag_maps_plus_and_checks_length() -> None:
    assert image_tag("1.17.0-495", "5.14.0-284.el9.aarch64+64k") == (
        "1.17.0-495-5.14.0-284.el9.aarch64_64k"
    )
    assert tag_problem("a" * 129) == "is 129 characters long; a tag holds at most 128"
    assert tag_problem("1.0-a~b") == "contains '~'; a tag holds only [A-Za-z0-9_.-]"
    assert tag_problem("1.6.0-439-6.1.0-56-amd64") is None


BAD_CASES = [
    # (edit applied to GOOD, the fragment of the one problem, or of each problem in order)
    (
        lambda t: t.replace("[library]", "[librar]"),
        ("librar: unknown key; did you mean 'library'?", "library.repository is missing"),
    ),
    (
        lambda t: t.replace('repository = "', 'repositry = "'),
        (
            "library.repositry: unknown key; did you mean 'repository'?",
            "library.repository is missing",
        ),
    ),
    (
        lambda t: t.replace('drivers = ["1.6.0-439", "1.7.0-1"]', 'driver = ["1.6.0-439"]'),
        (
            "kernels[0].driver: unknown key; did you mean 'drivers'?",
            "kernels[0].drivers is missing",
        ),
    ),
    (
        lambda t: t.replace('"registry.example.com/team/habana-ai-driver"', '"habana-ai-driver"'),
        "library.repository = 'habana-ai-driver': names no registry",
    ),
    (
        lambda t: t.replace("team/habana-ai-driver", "team/habana-ai-driver:latest"),
        "expected a repository without tag",
    ),
    (
        lambda t: t.replace("4.18.0-372.19.1.el8_6.x86_64", "4.18"),
        "kernels[0].release = '4.18': expected a full kernel release",
    ),
    (
        lambda t: t.replace('"1.6.0-439", "1.7.0-1"', '"1.6.0-439", "1.6.0-439"'),
        "kernels[0].drivers = '1.6.0-439': duplicate pair",
    ),
    (
        lambda t: t.replace('"1.6.0-439", "1.7.0-1"', '"latest"'),
        "kernels[0].drivers = 'latest': expected a driver version like 1.6.0-439",
    ),
    (
        lambda t: t.replace('"1.6.0-439", "1.7.0-1"', "1"),
        "kernels[0].drivers = [1]: expected an array of non-empty strings",
    ),
    (
        lambda t: t.replace('"1.6.0-439", "1.7.0-1"', ""),
        "kernels[0].drivers = []: expected at least one driver version",
    ),
    (
        lambda t: t.replace("{kernel}", "{kernal}"),
        "unknown placeholder {kernal}; did you mean {kernel}?",
    ),
    (
        lambda t: t.replace("4.18.0-372.19.1.el8_6.x86_64", "6.8.0-40-generic"),
        "kernels[0].arch is missing: release '6.8.0-40-generic' names no architecture",
    ),
    (
        lambda t: t.replace("4.18.0-372.19.1.el8_6.x86_64", "6.1.0-56-amd64"),
        (
            "(base.image) = 'registry.example.com/ubi8/ubi-minimal:{rhel_version}': uses "
            "{rhel_version} but kernel '6.1.0-56-amd64' has no RHEL version",
            "(package_url) = 'https://vault.example.com/{rhel_major}/habanalabs-{driver}.el8"
            ".noarch.rpm': uses {rhel_major} but kernel '6.1.0-56-amd64' has no RHEL version",
        ),
    ),
    (
        lambda t: t.replace(
            'drivers = ["1.6.0-439", "1.7.0-1"]', 'drivers = ["1.6.0-439"]\narch = "arm"'
        ),
        "kernels[0].arch = 'arm': expected one of x86_64, aarch64, ppc64le, s390x",
    ),
    (
        lambda t: t.replace(
            'drivers = ["1.6.0-439", "1.7.0-1"]', 'drivers = ["1.6.0-439"]\narch = "aarch64"'
        ),
        "kernels[0].arch = 'aarch64': release '4.18.0-372.19.1.el8_6.x86_64' is for x86_64",
    ),
    (
        lambda t: t.replace(
            'drivers = ["1.6.0-439", "1.7.0-1"]', 'drivers = ["1.6.0-439"]\nrhel_version = "eight"'
        ),
        "kernels[0].rhel_version = 'eight': expected MAJOR or MAJOR.MINOR",
    ),
    (
        lambda t: t.replace(
            "[[kernels]]", '[drivers."1.9.0-1"]\nmodules = ["habanalabs"]\n[[kernels]]'
        ),
        "drivers.\"1.9.0-1\" = '1.9.0-1': no [[kernels]] entry uses this driver",
    ),
    (
        lambda t: t.replace(
            "[[kernels]]", '[drivers."1.6.0-439"]\nmodules = ["habana labs"]\n[[kernels]]'
        ),
        "drivers.\"1.6.0-439\".modules = 'habana labs': expected a module name",
    ),
    (
        lambda t: t.replace("dtk:{kernel}", "dtk:{kernel}@sha256:abc"),
        "has digest 'sha256:abc'; expected sha256:<64 hex digits>",
    ),
    (
        lambda t: t.replace('package_url = "https', 'package_url = 42\n#"'),
        "driver.package_url = 42: expected a non-empty string",
    ),
    (
        lambda t: t.replace(
            "4.18.0-372.19.1.el8_6.x86_64", "4.18.0-" + "1" * 120 + ".el8_6.x86_64"
        ),
        (
            "image tag '1.6.0-439-4.18.0-1111",
            "image tag '1.7.0-1-4.18.0-1111",
        ),
    ),
]


@pytest.mark.parametrize(("edit", "expected"), BAD_CASES)
def test_bad_input_names_file_key_value_and_expectation(
    tmp_path: Path, edit: object, expected: str | tuple[str, ...]
) -> None:
    problems = problems_of(tmp_path, edit(GOOD))  # type: ignore[operator]
    fragments = (expected,) if isinstance(expected, str) else expected
    assert len(problems) == len(fragments), problems
    for problem, fragment in zip(problems, fragments, strict=True):
        assert problem.startswith(f"{tmp_path / 'versions.toml'}: ") and fragment in problem


def test_missing_sections_are_all_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[library]\nsource = 'x'\n")
    text = "\n".join(problems)
    for fragment in (
        "library.repository is missing",
        "toolkit.image is missing",
        "driver.package_url is missing",
        "kernels is missing",
    ):
        assert fragment in text
    assert len(problems) == 4  # [base] and [image] are optional


def test_a_base_is_optional_and_a_written_one_names_its_image(tmp_path: Path) -> None:
    with_base = load_text(tmp_path, GOOD).targets[0]
    assert with_base.base_image == "registry.example.com/ubi8/ubi-minimal:8.6"
    base = 'image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}"\n'
    without = GOOD.replace("[base]\n" + base, "")
    assert load_text(tmp_path, without).targets[0].base_image is None
    empty = GOOD.replace(base, "", 1)
    assert problems_of(tmp_path, empty) == [
        f"{tmp_path / 'versions.toml'}: base.image is missing: expected a string"
    ]


@pytest.mark.parametrize("flavour", ["minimal", "kmm1"])
def test_each_flavour_is_accepted(tmp_path: Path, flavour: str) -> None:
    cfg = load_text(tmp_path, GOOD + f'[image]\nflavour = "{flavour}"\n')
    assert {t.flavour for t in cfg.targets} == {flavour}


@pytest.mark.parametrize("value", ["full", "MINIMAL", "1", "kmm2"])
def test_an_unknown_flavour_is_one_line_naming_the_choices(tmp_path: Path, value: str) -> None:
    problems = problems_of(tmp_path, GOOD + f'[image]\nflavour = "{value}"\n')
    assert len(problems) == 1
    assert "image.flavour" in problems[0] and "expected one of: minimal, kmm1" in problems[0]


def test_a_flavour_of_the_wrong_type_and_an_unknown_key_are_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD + "[image]\nflavour = 1\nsize = 2\n")
    assert len(problems) == 2
    assert any("image.flavour = 1" in p for p in problems)
    assert any("image.size" in p for p in problems)


def test_not_toml_is_one_clear_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[library\n")
    assert len(problems) == 1 and "not valid TOML" in problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        versions_file.load(tmp_path / "nope.toml")
    assert "nope.toml: cannot read the versions file: No such file or directory" in str(info.value)


def test_signing_paths_are_relative_to_the_file_and_the_key_may_come_from_the_environment(
    tmp_path: Path,
) -> None:
    cfg = load_text(tmp_path, GOOD + '[signing]\ncertificate = "keys/c.der"\nkey = "keys/k.pem"\n')
    assert cfg.signing == targets.SigningFiles(tmp_path / "keys/c.der", tmp_path / "keys/k.pem")
    path = tmp_path / "versions.toml"
    path.write_text(GOOD + '[signing]\ncertificate = "c.der"\n')
    from_env = versions_file.load(path, {sections.SIGNING_KEY_ENV: "/run/key.pem"})
    assert from_env.signing == targets.SigningFiles(tmp_path / "c.der", Path("/run/key.pem"))
    with pytest.raises(ConfigError, match=r"signing\.key is missing"):
        versions_file.load(path, {})
    assert load_text(tmp_path, GOOD).signing is None


def test_signing_without_key_or_certificate_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD + '[signing]\ncertificate = "c.der"\nkeys = "k"\n')
    assert any(
        "signing.key is missing: expected the path of the PEM private key" in p for p in problems
    )
    assert any("signing.keys: unknown key; did you mean 'key'?" in p for p in problems)
    problems = problems_of(tmp_path, GOOD + '[signing]\nkey = "k.pem"\n')
    assert any("signing.certificate is missing" in p for p in problems)


@pytest.mark.parametrize(
    ("entry", "arch"),
    [
        ('release = "5.14.0-284.el9.aarch64"', "aarch64"),
        ('release = "6.1.0-56-cloud-arm64"', "aarch64"),
        ('release = "6.8.0-40-generic"\narch = "s390x"', "s390x"),
    ],
)
def test_an_architecture_the_library_cannot_build_is_refused_at_parse_time(
    tmp_path: Path, entry: str, arch: str
) -> None:
    """The load test boots x86_64 guests only: another architecture is refused up front with
    the reason, never built without its proof."""
    text = GOOD.replace('release = "4.18.0-372.19.1.el8_6.x86_64"', entry, 1)
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert f"kernels[0].arch = '{arch}': not supported" in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ('"10G"', 10 * 1024**3),
        ('"500M"', 500 * 1024**2),
        ('"64KiB"', 64 * 1024),
        ('"2t"', 2 * 1024**4),
        ("1048576", 1048576),
        ("0", 0),
    ],
)
def test_the_compile_cache_size_takes_bytes_or_units(tmp_path: Path, value: str, size: int) -> None:
    cfg = load_text(tmp_path, GOOD + f"[cache]\nmax_size = {value}\n")
    assert cfg.cache.max_size == size


def test_the_compile_cache_size_defaults_to_ten_gib(tmp_path: Path) -> None:
    assert load_text(tmp_path, GOOD).cache.max_size == 10 * 1024**3


@pytest.mark.parametrize(
    "value", ['"10 parsecs"', "-1", "true", '"2P"', '"99999999999999T"', "1.5"]
)
def test_a_bad_compile_cache_size_is_one_line_naming_the_key(tmp_path: Path, value: str) -> None:
    problems = problems_of(tmp_path, GOOD + f"[cache]\nmax_size = {value}\n")
    assert len(problems) == 1
    assert "cache.max_size" in problems[0] and 'expected a size like "10G"' in problems[0]


def test_an_unknown_cache_key_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD + '[cache]\nmax_szie = "1G"\n')
    assert len(problems) == 1 and "cache.max_szie" in problems[0]


def test_node_kernel_args_are_read_per_kernel_and_default_to_none(tmp_path: Path) -> None:
    text = GOOD.replace('drivers = ["1.6.0-439", "1.7.0-1"]', 'drivers = ["1.6.0-439"]')
    plain = load_text(tmp_path, text).targets[0]
    assert plain.node_kernel_args == ()
    given = text + 'node_kernel_args = ["efi=runtime", "module.sig_enforce=1", "efi=runtime"]\n'
    target = load_text(tmp_path, given).targets[0]
    assert target.node_kernel_args == ("efi=runtime", "module.sig_enforce=1")  # once each


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('["console=ttyS1"]', "'console=ttyS1'"),
        ('["init=/bin/sh"]', "'init=/bin/sh'"),
        ('["efi=runtime; rm -rf /"]', "'efi=runtime; rm -rf /'"),
        ('["a b"]', "'a b'"),
        ('["x=$(id)"]', "'x=$(id)'"),
        ("[" + ", ".join(['"quiet2"'] * 17) + "]", "17 arguments"),
        ('"efi=runtime"', "expected an array of non-empty strings"),
    ],
)
def test_a_bad_node_kernel_argument_is_one_line_naming_it(
    tmp_path: Path, value: str, named: str
) -> None:
    problems = problems_of(tmp_path, GOOD + f"node_kernel_args = {value}\n")
    assert len(problems) == 1, problems
    assert "kernels[0].node_kernel_args" in problems[0] and named in problems[0], problems[0]


DEB13 = """\
[library]
repository = "r.example/lib/drv"
[toolkit]
image = "r.example/dtk:{TOOLKIT}"
[driver]
package_url = "https://vault.example/{kernel}/habanalabs-{driver}.el8.noarch.rpm"
modules = ["habanalabs"]
[[kernels]]
release = "6.12.117+deb13-amd64"
drivers = ["6.12.0-1"]
"""


def test_a_release_with_plus_is_tagged_as_kmm_tags_it(tmp_path: Path) -> None:
    """The image's tag writes '+' as '_' (KMM's rule); {kernel_tag} does the same for images
    tagged by kernel; the release itself keeps its '+' where it is the release (a URL)."""
    (target,) = load_text(tmp_path, DEB13.replace("{TOOLKIT}", "{kernel_tag}")).targets
    assert target.kernel == "6.12.117+deb13-amd64"
    assert target.tag == "6.12.0-1-6.12.117_deb13-amd64"
    assert target.image == "r.example/lib/drv:6.12.0-1-6.12.117_deb13-amd64"
    assert target.toolkit_image == "r.example/dtk:6.12.117_deb13-amd64"
    assert target.package_url == (
        "https://vault.example/6.12.117+deb13-amd64/habanalabs-6.12.0-1.el8.noarch.rpm"
    )


def test_kernel_in_a_tag_with_plus_names_kernel_tag(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, DEB13.replace("{TOOLKIT}", "{kernel}"))
    assert "(toolkit.image) = 'r.example/dtk:6.12.117+deb13-amd64'" in problem
    assert problem.endswith(
        "; a tag cannot hold '+': write {kernel_tag} where the tag names the kernel"
    )
