"""Where the recipe lives (Dockerfile, versions.toml) and where a run keeps its cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from habana_tasks.config import versions_file
from habana_tasks.config.targets import Config


@dataclass(frozen=True)
class Project:
    root: Path
    cache_dir: Path | None = None

    @property
    def cache(self) -> Path:
        """cache_dir, else $HABANA_CACHE_DIR, else .cache beside the recipe."""
        return self.cache_dir or Path(os.environ.get("HABANA_CACHE_DIR", self.root / ".cache"))

    @property
    def compile_cache(self) -> Path:
        """$HABANA_COMPILE_CACHE_DIR (a volume several checkouts or users share, or a CI
        cache), else compile/ in the cache."""
        given = os.environ.get("HABANA_COMPILE_CACHE_DIR")
        return Path(given) if given else self.cache / "compile"

    @property
    def kernels(self) -> Path:
        """Target kernels read from toolkit images, keyed by the toolkit's digest."""
        return self.cache / "kernels"

    @property
    def verify_work(self) -> Path:
        """Where `verify` (and kmm-module, which verifies) exports the images it checks."""
        return self.cache / "work" / "verify"

    @property
    def dockerfile(self) -> Path:
        return self.root / "Dockerfile"

    def versions(self, given: str | None) -> Path:
        path = Path(given) if given else self.root / "versions.toml"
        return path if path.is_absolute() else (Path.cwd() / path)

    def load(self, versions: str | None) -> Config:
        """The versions file, parsed; every problem in it raised at once (ConfigError)."""
        return versions_file.load(self.versions(versions))
