"""Container image references: `registry/repository[:tag][@digest]`, always fully qualified."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The one copy of the distribution spec's grammar: tags, digests and repository components.
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
MAX_TAG_LENGTH = 128
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
# host[:port] as podman names a registry: a DNS name, an IPv4 address or a bracketed IPv6 one.
REGISTRY_HOST_RE = re.compile(
    r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?\Z"
)
DOCKER_HUB = "docker.io"
MAX_PORT = 65535


def registry_host_problem(host: str) -> str | None:
    """Why host is not a registry's host[:port] (a scheme, a path, a bad port); None if it is."""
    m = REGISTRY_HOST_RE.match(host)
    if m is None or (m.group(2) is not None and not 0 < int(m.group(2)) <= MAX_PORT):
        return "expected host[:port] without scheme or path, e.g. 127.0.0.1:5000"
    return None


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
        if "://" in rest:
            raise ValueError(
                f"has a scheme ({rest.split('://', 1)[0]}://); expected registry/repository[:tag]"
            )
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
            if not TAG_RE.match(tag):
                raise ValueError(f"has tag {tag!r}; a tag holds only [A-Za-z0-9_.-], at most 128")
        if "/" not in rest:
            raise ValueError(
                "names no registry; expected registry/repository[:tag] (e.g. quay.io/x/y)"
            )
        registry, repository = rest.split("/", 1)
        if registry_host_problem(registry):
            raise ValueError(f"has registry {registry!r}; expected host[:port], e.g. quay.io")
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
