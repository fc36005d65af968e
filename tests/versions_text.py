"""A good versions file's text, and a versions file loaded from text (or its problems)."""

from __future__ import annotations

from pathlib import Path

import pytest

from habana_tasks.config import targets, versions_file
from habana_tasks.core.errors import ConfigError

GOOD = """
[library]
repository = "registry.example.com/team/habana-ai-driver"
[base]
image = "registry.example.com/ubi8/ubi-minimal:{rhel_version}"
[toolkit]
image = "registry.example.com/dtk:{kernel}"
[driver]
package_url = "https://vault.example.com/{rhel_major}/habanalabs-{driver}.el8.noarch.rpm"
[[kernels]]
release = "4.18.0-372.19.1.el8_6.x86_64"
drivers = ["1.6.0-439", "1.7.0-1"]
"""


def load_text(tmp_path: Path, text: str) -> targets.Config:
    path = tmp_path / "versions.toml"
    path.write_text(text)
    return versions_file.load(path)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.exit_code == 2
    return info.value.problems
