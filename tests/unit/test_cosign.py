"""[cosign] as versions.toml declares it, and how the tool finds a usable cosign and its key's
password. These use stand-in cosign scripts; tests/integration/test_image_trust.py runs the
real cosign against a real registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from habana_tasks.config import sections, targets
from habana_tasks.core.errors import ConfigError, UsageError
from habana_tasks.core.process import ProcessRunner, child_environment
from habana_tasks.trust import cosign
from tests.versions_text import GOOD, load_text, problems_of

COSIGN = "[cosign]\n"


def test_a_key_file_and_its_public_key_are_relative_to_the_versions_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD + COSIGN + 'key = "k/cosign.key"\npublic_key = "k/cosign.pub"\n')
    assert cfg.image_signing == targets.ImageSigning(
        "k/cosign.key", tmp_path / "k/cosign.key", tmp_path / "k/cosign.pub"
    )
    # cosign is given the path resolved against the versions file, whatever the working directory.
    assert cfg.image_signing is not None
    assert cfg.image_signing.reference == str(tmp_path / "k/cosign.key")
    assert load_text(tmp_path, GOOD).image_signing is None
    # The module key of [signing] is another thing entirely: neither implies the other.
    assert load_text(tmp_path, GOOD).signing is None


@pytest.mark.parametrize(
    "uri",
    [
        "awskms://kms.eu-west-1.amazonaws.com/alias/habana",
        "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/versions/1",
        "azurekms://vault.vault.azure.net/habana",
        "hashivault://habana",
        "k8s://ns/secret",
        "pkcs11:token=habana;slot-id=0",
    ],
)
def test_a_kms_uri_is_passed_through_untouched(tmp_path: Path, uri: str) -> None:
    cfg = load_text(tmp_path, GOOD + COSIGN + f'key = "{uri}"\npublic_key = "cosign.pub"\n')
    assert cfg.image_signing is not None
    assert (cfg.image_signing.key, cfg.image_signing.key_file) == (uri, None)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('key = "cosign.key"\n', "cosign.public_key is missing"),
        ('public_key = "cosign.pub"\n', "cosign.key is missing"),
        ('key = "https://example.com/k"\npublic_key = "p"\n', sections.COSIGN_KEY_EXPECTED),
        ('key = ""\npublic_key = "p"\n', "cosign.key = '': expected a non-empty string"),
        ('key = "a\\u0007b"\npublic_key = "p"\n', sections.COSIGN_KEY_EXPECTED),
        ('key = 7\npublic_key = "p"\n', "cosign.key = 7"),
        ('key = "k"\npublic_key = "p"\npassword = "x"\n', "cosign.password"),
        (
            'key = "hashivault://k"\npublic_key = "p"\npassword_file = "pw"\n',
            "a KMS key has no password file",
        ),
    ],
)
def test_a_bad_cosign_table_is_refused_by_name(tmp_path: Path, body: str, said: str) -> None:
    problems = problems_of(tmp_path, GOOD + COSIGN + body)
    assert any(said in p for p in problems), problems


def stand_in(directory: Path, version: str, features: str = "") -> Path:
    """A cosign that says `version` and whose help lists `features`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cosign"
    path.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = version ] && echo \'{{"gitVersion": "{version}"}}\' && exit 0\n'
        f"echo '{features}'\n"
    )
    path.chmod(0o755)
    return path


def test_cosign_on_path_is_used_when_new_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = stand_in(tmp_path / "bin", "v2.4.1")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    found = cosign.find(ProcessRunner(), tmp_path / "project")
    assert (found.path, found.version) == (str(on_path), "v2.4.1")


def test_an_old_cosign_on_path_gives_way_to_the_unpacked_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path / "bin", "v2.1.1")
    project = tmp_path / "project"
    unpacked = stand_in(
        (project / cosign.UNPACKED).parent, "devel", "slsaprovenance1 --tlog-upload"
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    found = cosign.find(ProcessRunner(), project)
    # A distribution build says "devel": it is taken for what its help offers.
    assert (found.path, found.version) == (str(unpacked), "devel")


def test_cosign_3_on_path_gives_way_to_a_2x_copy_or_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cosign 3 changes where signatures go (a referrers bundle, not the .sig tag nodes read):
    refused before anything is built, naming the version found."""
    three = stand_in(tmp_path / "bin", "v3.0.2")
    project = tmp_path / "project"
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    with pytest.raises(UsageError) as info:
        cosign.find(ProcessRunner(), project)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert f"{three} is v3.0.2, 3 or newer, which stores signatures where nodes" in message
    assert "no cosign from 2.2 to 2.x was found" in message
    unpacked = stand_in((project / cosign.UNPACKED).parent, "v2.5.0")
    assert cosign.find(ProcessRunner(), project).path == str(unpacked)


def test_no_usable_cosign_is_one_usage_error_naming_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path / "bin", "v2.1.1")
    project = tmp_path / "project"
    stand_in((project / cosign.UNPACKED).parent, "devel", "slsaprovenance02")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    with pytest.raises(UsageError) as info:
        cosign.find(ProcessRunner(), project)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert "is v2.1.1, older than 2.2" in message and "is devel, older than 2.2" in message
    assert "scripts/install-deps" in message


def signing_with(tmp_path: Path, password_file: Path | None = None) -> targets.ImageSigning:
    return targets.ImageSigning(
        "cosign.key", tmp_path / "cosign.key", tmp_path / "p", password_file
    )


def test_the_password_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from the file\n")
    assert cosign.password(signing_with(tmp_path, secret), {}) == "from the file"
    environ = {cosign.PASSWORD_VARIABLE: "from the environment"}
    assert cosign.password(signing_with(tmp_path), environ) == "from the environment"
    kms = targets.ImageSigning("hashivault://k", None, tmp_path / "p")
    assert cosign.password(kms, {}) is None
    with pytest.raises(UsageError, match="set COSIGN_PASSWORD or name a file"):
        cosign.password(signing_with(tmp_path), {})


def test_a_password_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="cosign password file is a FIFO"):
        cosign.password(signing_with(tmp_path, fifo), {})


def test_no_child_but_cosign_is_given_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cosign.PASSWORD_VARIABLE, "canary")
    assert cosign.PASSWORD_VARIABLE not in child_environment()
    given = child_environment({cosign.PASSWORD_VARIABLE: "canary"})
    assert given[cosign.PASSWORD_VARIABLE] == "canary"


def test_a_public_key_must_be_one(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="expected a PEM public key"):
        cosign.public_key(tmp_path / "p")


def test_an_unreadable_config_is_still_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_text(tmp_path, GOOD + "[cosign]\nkey = [1]\npublic_key = 'p'\n")
