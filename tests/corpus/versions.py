"""A corpus of bad versions files, each with the problems it must be refused for.

Every case is a good file with one or more faults put in (or bytes that are not TOML at all), so
that each expected message is the one problem that case is about. Used by
tests/unit/test_versions_corpus.py and by the reliability report (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass

GOOD = """\
[library]
repository = "registry.example.com/team/habana-ai-driver"
source = "https://example.com/src"
vendor = "team"
insecure_registries = ["mirror.local:5000"]

[base]
image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}"

[toolkit]
image = "registry.example.com/dtk:{kernel}"

[driver]
package_url = "https://vault.example.com/{rhel_major}/habanalabs-{driver}.el8.noarch.rpm"
firmware_url = "https://vault.example.com/{rhel_major}/habanalabs-firmware-{driver}.el8.{arch}.rpm"
modules = ["habanalabs"]

[drivers."1.7.0-1"]
modules = ["habanalabs", "habanalabs_cn"]

[discover]
release_repository = "quay.io/openshift-release-dev/ocp-release"
minors = ["4.14"]
arches = ["x86_64"]
drivers = ["1.6.0-439"]
rt = false

[[kernels]]
release = "4.18.0-372.19.1.el8_6.x86_64"
drivers = ["1.6.0-439", "1.7.0-1"]

[[kernels]]
release = "5.14.0-284.30.1.el9_2.x86_64"
drivers = ["1.6.0-439"]
"""


@dataclass(frozen=True)
class Case:
    name: str
    content: bytes
    expected: tuple[str, ...]  # each must appear in the refusal, in one of its lines
    family: str


TOOLKIT = 'image = "registry.example.com/dtk:{kernel}"'
# The second kernel entry's drivers line (the last line of GOOD).
K1D = 'el9_2.x86_64"\ndrivers = ["1.6.0-439"]'


def _sub(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _case(family: str, name: str, text: str | bytes, *expected: str) -> Case:
    content = text.encode() if isinstance(text, str) else text
    return Case(f"{family}/{name}", content, tuple(expected), family)


def _syntax() -> list[Case]:
    bad = "not valid TOML"
    return [
        _case("syntax", "unterminated-string", _sub('vendor = "team"', 'vendor = "team'), bad),
        _case(
            "syntax", "duplicate-key", _sub('vendor = "team"', 'vendor = "a"\nvendor = "b"'), bad
        ),
        _case("syntax", "duplicate-table", GOOD + '\n[base]\nimage = "x"\n', bad),
        _case("syntax", "bad-escape", _sub('vendor = "team"', 'vendor = "te\\qam"'), bad),
        _case("syntax", "bare-word", _sub('vendor = "team"', "vendor = team"), bad),
        _case("syntax", "unclosed-array", _sub('minors = ["4.14"]', 'minors = ["4.14"'), bad),
        _case("syntax", "unclosed-header", _sub("[base]", "[base"), bad),
        _case("syntax", "nul-byte", _sub('vendor = "team"', 'vendor = "te\x00am"'), bad),
        _case(
            "syntax",
            "latin-1",
            _sub('vendor = "team"', 'vendor = "équipe"').encode("latin-1"),
            "not UTF-8 text",
            "expected a UTF-8 TOML file",
        ),
        _case("syntax", "utf-16", GOOD.encode("utf-16"), "not UTF-8 text"),
        _case("syntax", "binary", bytes(range(256)), "not UTF-8 text"),
        _case("syntax", "empty", "", "library.repository is missing", "kernels is missing"),
    ]


# (key as reported, line in GOOD, value's TOML, kind of value expected)
FIELDS = [
    ("library.repository", 'repository = "registry.example.com/team/habana-ai-driver"', "string"),
    ("library.source", 'source = "https://example.com/src"', "string"),
    ("library.vendor", 'vendor = "team"', "string"),
    ("library.insecure_registries", 'insecure_registries = ["mirror.local:5000"]', "list"),
    ("base.image", 'image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}"', "string"),
    ("toolkit.image", 'image = "registry.example.com/dtk:{kernel}"', "string"),
    (
        "driver.package_url",
        'package_url = "https://vault.example.com/{rhel_major}/habanalabs-{driver}.el8.noarch.rpm"',
        "string",
    ),
    ("driver.modules", 'modules = ["habanalabs"]', "list"),
    ("kernels[0].release", 'release = "4.18.0-372.19.1.el8_6.x86_64"', "string"),
    ("kernels[0].drivers", 'drivers = ["1.6.0-439", "1.7.0-1"]', "list"),
    ("discover.minors", 'minors = ["4.14"]', "list"),
    ("discover.arches", 'arches = ["x86_64"]', "list"),
    ("discover.drivers", 'drivers = ["1.6.0-439"]\nrt', "list"),
    ("discover.rt", "rt = false", "bool"),
    (
        "discover.release_repository",
        'release_repository = "quay.io/openshift-release-dev/ocp-release"',
        "string",
    ),
]
EXPECTED_KIND = {
    "string": "expected a non-empty string",
    "list": "expected an array of non-empty strings",
    "bool": "expected true or false",
}
WRONG_VALUES = {
    "string": [
        ("int", "42"),
        ("bool", "true"),
        ("array", '["a"]'),
        ("empty", '""'),
        ("blank", '"   "'),
    ],
    "list": [("int", "42"), ("string", '"a"'), ("ints", "[1, 2]"), ("empty-item", '["a", ""]')],
    "bool": [("string", '"yes"'), ("int", "1")],
}


def _types() -> list[Case]:
    cases = []
    for key, line, kind in FIELDS:
        name = line.split(" = ", 1)[0]
        suffix = "\nrt" if line.endswith("\nrt") else ""
        for label, value in WRONG_VALUES[kind]:
            text = _sub(line, f"{name} = {value}{suffix}")
            cases.append(_case("types", f"{key}-{label}", text, key, EXPECTED_KIND[kind]))
    return cases


def _trailing_newlines() -> list[Case]:
    """Patterns anchored with $ would accept a value that ends in a newline: none may."""
    release = "expected a full kernel release"
    return [
        _case(
            "newline",
            "release",
            _sub(
                'release = "5.14.0-284.30.1.el9_2.x86_64"',
                'release = "5.14.0-284.30.1.el9_2.x86_64\\n"',
            ),
            "kernels[1].release",
            release,
        ),
        _case(
            "newline",
            "driver",
            _sub(K1D, K1D.replace('"1.6.0-439"', '"1.6.0-439\\n"')),
            "kernels[1].drivers",
            "expected a driver version",
        ),
        _case(
            "newline",
            "module",
            _sub('modules = ["habanalabs"]', 'modules = ["habanalabs\\n"]'),
            "driver.modules",
            "expected a module name",
        ),
        _case(
            "newline",
            "rhel-version",
            _sub(K1D, K1D + '\nrhel_version = "9.2\\n"'),
            "kernels[1].rhel_version",
            "expected MAJOR or MAJOR.MINOR",
        ),
        _case(
            "newline",
            "minor",
            _sub('minors = ["4.14"]', 'minors = ["4.14\\n"]'),
            "discover.minors",
            "expected an OpenShift minor",
        ),
        _case(
            "newline",
            "discover-driver",
            _sub('drivers = ["1.6.0-439"]\nrt', 'drivers = ["1.6.0-439\\n"]\nrt'),
            "discover.drivers",
            "expected a driver version",
        ),
        _case(
            "newline",
            "drivers-table",
            _sub('[drivers."1.7.0-1"]', '[drivers."1.7.0-1\\n"]'),
            'drivers."1.7.0-1\\n"',
            "expected a driver version",
        ),
        _case(
            "newline",
            "arch",
            _sub(
                'release = "5.14.0-284.30.1.el9_2.x86_64"\n',
                'release = "5.14.0-284.30.1.el9_2.x86_64"\narch = "x86_64\\n"\n',
            ),
            "kernels[1].arch",
            "expected one of x86_64",
        ),
        _case(
            "newline",
            "repository",
            _sub(
                'repository = "registry.example.com/team/habana-ai-driver"',
                'repository = "registry.example.com/team/habana-ai-driver\\n"',
            ),
            "library.repository",
        ),
        _case(
            "newline",
            "base-image",
            _sub(
                'image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}"',
                'image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}\\n"',
            ),
            "base.image",
        ),
        _case(
            "newline",
            "insecure",
            _sub('["mirror.local:5000"]', '["mirror.local:5000\\n"]'),
            "library.insecure_registries",
            "expected host[:port]",
        ),
        _case(
            "newline",
            "package-url",
            _sub('habanalabs-{driver}.el8.noarch.rpm"', 'habanalabs-{driver}.el8.noarch.rpm\\n"'),
            "driver.package_url",
            "white space or a control character",
        ),
    ]


URL_EXPECT = "expected http(s)://host/path or file:///absolute/path"


def _urls() -> list[Case]:
    package = '"https://vault.example.com/{rhel_major}/habanalabs-{driver}.el8.noarch.rpm"'
    firmware = (
        '"https://vault.example.com/{rhel_major}/habanalabs-firmware-{driver}.el8.{arch}.rpm"'
    )
    values = [
        ("ftp", '"ftp://vault.example.com/p.rpm"', "scheme 'ftp' is not supported"),
        ("no-scheme", '"vault.example.com/p.rpm"', "has no scheme"),
        ("absolute-path", '"/srv/p.rpm"', "has no scheme"),
        ("file-relative", '"file:packages/p.rpm"', "is a relative file path"),
        ("file-host", '"file://srv/packages/p.rpm"', "names host 'srv'"),
        ("no-host", '"https:///p.rpm"', "has no host"),
        ("credentials", '"https://user:secret@vault.example.com/p.rpm"', "holds credentials"),
        ("bad-port", '"https://vault.example.com:99999/p.rpm"', "has an invalid port"),
        ("space", '"https://vault.example.com/my p.rpm"', "white space"),
    ]
    cases = []
    for label, value, why in values:
        cases.append(
            _case("urls", f"package-{label}", _sub(package, value), "driver.package_url", why)
        )
    for label, value, why in values[:5]:
        cases.append(
            _case("urls", f"firmware-{label}", _sub(firmware, value), "driver.firmware_url", why)
        )
    override = _sub(
        '[drivers."1.7.0-1"]\n', '[drivers."1.7.0-1"]\npackage_url = "gopher://x/p.rpm"\n'
    )
    cases.append(
        _case(
            "urls", "override-scheme", override, 'drivers."1.7.0-1".package_url', "scheme 'gopher'"
        )
    )
    return cases


def _meaning() -> list[Case]:
    k1 = 'release = "5.14.0-284.30.1.el9_2.x86_64"\n'
    # Releases of the right characters but no real shape: empty parts between separators.
    empty_parts = [
        _case(
            "meaning",
            f"release-empty-parts-{n}",
            _sub(k1, f'release = "{release}"\n'),
            f"kernels[1].release = {release!r}",
            "expected a full kernel release",
        )
        for n, release in enumerate(
            ("6.1.0-..", "6.1.0-a..b", "6.1.0--amd64", "6.1.0-56-amd64-", "6.1.0-56._x86_64")
        )
    ]
    return [
        *empty_parts,
        _case(
            "meaning",
            "rhel-contradicts-release",
            _sub(k1, k1 + 'rhel_version = "9.0"\n'),
            "kernels[1].rhel_version = '9.0'",
            "is RHEL 9.2",
        ),
        _case(
            "meaning",
            "arch-contradicts-release",
            _sub(k1, k1 + 'arch = "aarch64"\n'),
            "kernels[1].arch = 'aarch64'",
            "is for x86_64",
        ),
        _case(
            "meaning",
            "insecure-with-scheme",
            _sub('["mirror.local:5000"]', '["http://mirror.local:5000"]'),
            "library.insecure_registries = 'http://mirror.local:5000'",
            "without scheme or path",
        ),
        _case(
            "meaning",
            "insecure-with-path",
            _sub('["mirror.local:5000"]', '["mirror.local:5000/v2"]'),
            "library.insecure_registries",
            "without scheme or path",
        ),
        _case(
            "meaning",
            "insecure-trailing-slash",
            _sub('["mirror.local:5000"]', '["mirror.local:5000/"]'),
            "library.insecure_registries",
            "without scheme or path",
        ),
        _case(
            "meaning",
            "duplicate-pair",
            _sub(K1D, K1D.replace('"1.6.0-439"]', '"1.6.0-439", "1.6.0-439"]')),
            "duplicate pair",
        ),
        _case(
            "meaning",
            "duplicate-kernel",
            GOOD
            + '\n[[kernels]]\nrelease = "5.14.0-284.30.1.el9_2.x86_64"\ndrivers = ["1.6.0-439"]\n',
            "duplicate pair",
        ),
        _case(
            "meaning",
            "tag-too-long",
            _sub(k1, 'release = "5.14.0-' + "1" * 120 + '.el9_2.x86_64"\n'),
            "a tag holds at most 128",
        ),
        _case(
            "meaning",
            "unknown-top-key",
            "[libary]\n" + GOOD,
            "libary: unknown key; did you mean 'library'?",
        ),
        _case(
            "meaning",
            "unknown-library-key",
            _sub('vendor = "team"', 'vendor = "team"\nrepo = "x"'),
            "library.repo: unknown key",
        ),
        _case(
            "meaning",
            "unknown-kernel-key",
            _sub(k1, k1 + 'driver = ["1.6.0-439"]\n'),
            "kernels[1].driver: unknown key; did you mean 'drivers'?",
        ),
        _case(
            "meaning",
            "unknown-placeholder",
            _sub("dtk:{kernel}", "dtk:{kernal}"),
            "unknown placeholder {kernal}; did you mean {kernel}?",
        ),
        _case(
            "meaning",
            "bad-template",
            _sub("dtk:{kernel}", "dtk:{kernel"),
            "toolkit.image",
            "is not a valid template",
        ),
        _case(
            "meaning",
            "rhel-placeholder-debian",
            _sub(k1, 'release = "6.1.0-55-amd64"\n'),
            "has no RHEL version; set rhel_version",
        ),
        _case(
            "meaning",
            "unused-override",
            _sub('drivers = ["1.6.0-439", "1.7.0-1"]', 'drivers = ["1.6.0-439"]'),
            'drivers."1.7.0-1"',
            "no [[kernels]] entry uses this driver",
        ),
        _case(
            "meaning", "no-kernels", GOOD.split("[[kernels]]", maxsplit=1)[0], "kernels is missing"
        ),
        _case(
            "meaning",
            "empty-drivers",
            _sub(K1D, K1D.replace('["1.6.0-439"]', "[]")),
            "kernels[1].drivers",
            "expected at least one driver version",
        ),
        _case(
            "meaning",
            "no-arch",
            _sub(k1, 'release = "5.14.0-284.30.1.el9_2"\n'),
            "kernels[1].arch is missing",
        ),
        _case(
            "meaning",
            "unknown-arch",
            _sub(k1, 'release = "5.14.0-284.30.1.el9_2"\narch = "riscv64"\n'),
            "kernels[1].arch = 'riscv64'",
            "expected one of",
        ),
        _case(
            "meaning",
            "repository-with-tag",
            _sub('team/habana-ai-driver"', 'team/habana-ai-driver:latest"'),
            "library.repository",
            "without tag",
        ),
        _case(
            "meaning",
            "repository-uppercase",
            _sub('team/habana-ai-driver"', 'Team/Habana"'),
            "library.repository",
        ),
        _case(
            "meaning",
            "empty-modules",
            _sub('modules = ["habanalabs"]', "modules = []"),
            "driver.modules",
            "at least one module name",
        ),
        _case(
            "meaning",
            "module-twice",
            _sub('modules = ["habanalabs"]', 'modules = ["habanalabs", "habanalabs"]'),
            "driver.modules",
            "lists a module twice",
        ),
        _case(
            "meaning",
            "module-with-slash",
            _sub('modules = ["habanalabs"]', 'modules = ["../habanalabs"]'),
            "driver.modules",
            "expected a module name",
        ),
        _case(
            "meaning",
            "driver-version-words",
            _sub(K1D, K1D.replace('"1.6.0-439"', '"latest"')),
            "kernels[1].drivers = 'latest'",
            "expected a driver version",
        ),
        _case(
            "meaning",
            "kernels-not-array",
            'kernels = "all"\n' + GOOD.split("[[kernels]]", maxsplit=1)[0],
            "kernels",
            "expected a non-empty array",
        ),
        _case(
            "meaning",
            "kernel-not-table",
            'kernels = ["6.1.0-55-amd64"]\n' + GOOD.split("[[kernels]]", maxsplit=1)[0],
            "kernels[0]",
            "expected a table",
        ),
        _case(
            "meaning",
            "driver-not-table",
            "driver = 1\n" + _sub("[driver]\n", "[driverx]\n"),
            "driver = 1: expected a table",
        ),
        _case(
            "meaning",
            "image-with-scheme",
            _sub(TOOLKIT, TOOLKIT.replace('"registry', '"https://registry')),
            "toolkit.image",
            "has a scheme (https://)",
        ),
        _case(
            "meaning",
            "image-bad-port",
            _sub(TOOLKIT, TOOLKIT.replace("example.com/", "example.com:99999/")),
            "toolkit.image",
            "has registry 'registry.example.com:99999'",
        ),
        _case(
            "meaning",
            "insecure-bad-port",
            _sub('["mirror.local:5000"]', '["mirror.local:0"]'),
            "library.insecure_registries = 'mirror.local:0'",
        ),
        _case(
            "meaning",
            "repository-with-scheme",
            _sub('repository = "registry', 'repository = "http://registry'),
            "library.repository",
            "has a scheme (http://)",
        ),
        _case(
            "meaning",
            "release-repository-bad",
            _sub("quay.io/openshift-release-dev/ocp-release", "quay.io/OCP Release"),
            "discover.release_repository",
        ),
        _case(
            "meaning",
            "discover-unknown-arch",
            _sub('arches = ["x86_64"]', 'arches = ["amd64"]'),
            "discover.arches = 'amd64'",
            "expected one of",
        ),
    ]


def _templates() -> list[Case]:
    """Placeholders are plain {name}: anything format() would treat as code is refused."""
    cases = []
    for label, placeholder, why in [
        ("conversion", "{kernel!r}", "takes no !conversion or :format"),
        ("bad-conversion", "{kernel!x}", "takes no !conversion or :format"),
        ("format-spec", "{kernel:>80}", "takes no !conversion or :format"),
        ("nested", "{kernel:{arch}}", "takes no !conversion or :format"),
        ("positional-empty", "{}", "unknown placeholder {}"),
        ("positional-index", "{0}", "unknown placeholder {0}"),
        ("index", "{kernel[0]}", "unknown placeholder {kernel[0]}"),
        ("attribute", "{kernel.upper}", "unknown placeholder {kernel.upper}"),
        ("lone-brace", "{", "is not a valid template"),
        ("closing-brace", "}", "is not a valid template"),
    ]:
        text = _sub("dtk:{kernel}", f"dtk:{placeholder}")
        cases.append(_case("templates", f"toolkit-{label}", text, "toolkit.image", why))
    url = _sub("habanalabs-{driver}.el8.noarch.rpm", "habanalabs-{driver!s}.el8.noarch.rpm")
    cases.append(_case("templates", "package-conversion", url, "driver.package_url", "!conversion"))
    return cases


def _multi() -> list[Case]:
    """Several independent problems in one file: every one is reported, in one run."""
    k1 = 'release = "5.14.0-284.30.1.el9_2.x86_64"\ndrivers = ["1.6.0-439"]'
    return [
        _case(
            "multi",
            "entry-with-three-problems",
            _sub(k1, 'release = "5.14"\ndrivers = ["x"]\nrhel_version = "nine"\narch = "mips"'),
            "kernels[1].release = '5.14'",
            "kernels[1].drivers = 'x'",
            "kernels[1].rhel_version = 'nine'",
            "kernels[1].arch = 'mips'",
        ),
        _case(
            "multi",
            "three-sections",
            _sub(
                "dtk:{kernel}",
                "dtk:{kernal}",
                _sub('vendor = "team"', "vendor = 1", _sub("rt = false", 'rt = "no"')),
            ),
            "library.vendor = 1",
            "unknown placeholder {kernal}",
            "discover.rt = 'no'",
        ),
        _case(
            "multi",
            "urls-and-insecure",
            _sub(
                '["mirror.local:5000"]',
                '["https://m"]',
                _sub('package_url = "https', 'package_url = "ftp'),
            ),
            "library.insecure_registries = 'https://m'",
            "driver.package_url",
            "scheme 'ftp'",
        ),
        _case(
            "multi",
            "two-entries",
            _sub(
                'release = "4.18.0-372.19.1.el8_6.x86_64"',
                'release = "4.18"',
                _sub(K1D, K1D.replace('"1.6.0-439"', '"bad"')),
            ),
            "kernels[0].release = '4.18'",
            "kernels[1].drivers = 'bad'",
        ),
        _case(
            "multi",
            "unknown-keys-everywhere",
            _sub("[base]\n", "[base]\nimg = 1\n", _sub("[toolkit]\n", "[toolkit]\nimages = 1\n")),
            "base.img: unknown key",
            "toolkit.images: unknown key; did you mean 'image'?",
        ),
        _case(
            "multi",
            "newlines-everywhere",
            _sub(
                'modules = ["habanalabs"]',
                'modules = ["habanalabs\\n"]',
                _sub('minors = ["4.14"]', 'minors = ["4.14\\n"]'),
            ),
            "driver.modules",
            "discover.minors",
        ),
    ]


CASES: list[Case] = [
    *_syntax(),
    *_types(),
    *_trailing_newlines(),
    *_urls(),
    *_templates(),
    *_meaning(),
    *_multi(),
]
