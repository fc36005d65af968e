"""Container image references: `registry/repository[:tag][@digest]`, always fully qualified."""

from __future__ import annotations

import re
from dataclasses import dataclass

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse a fully qualified reference; raises ValueError saying what is wrong."""
        rest = text.strip()
        if not rest or rest != text:
            raise ValueError("is empty or has surrounding spaces")
        digest = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not DIGEST_RE.match(digest):
                raise ValueError(f"has digest {digest!r}; expected sha256:<64 hex digits>")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise ValueError(f"has tag {tag!r}; a tag holds only [A-Za-z0-9_.-], at most 128")
        if "/" not in rest:
            raise ValueError(
                "names no registry; expected registry/repository[:tag] (e.g. quay.io/x/y)"
            )
        registry, repository = rest.split("/", 1)
        if not ("." in registry or ":" in registry or registry == "localhost"):
            raise ValueError(
                f"starts with {registry!r}, which is not a registry host; "
                "write it fully qualified (e.g. docker.io/library/x)"
            )
        for part in repository.split("/"):
            if not _REPO_COMPONENT_RE.match(part):
                raise ValueError(
                    f"has repository {repository!r}; expected lowercase [a-z0-9._-] parts"
                )
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
