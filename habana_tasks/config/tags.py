"""The image tag contract: `<driver>-<kernel release>`, i.e. `<driver>-${KERNEL_FULL_VERSION}`."""

from __future__ import annotations

from habana_tasks.config.image_reference import MAX_TAG_LENGTH, TAG_RE

# A tag cannot hold '+' (64k-page kernels: "...el9.aarch64+64k"); it becomes '_', as other
# driver libraries do. A KMM kernelMapping for such kernels must name the mapped tag literally.
TAG_CHARACTER_MAP = {"+": "_"}


def image_tag(driver_version: str, kernel_release: str) -> str:
    return tag_text(f"{driver_version}-{kernel_release}")


def tag_text(raw: str) -> str:
    """A text as a tag holds it (KMM's rule): 6.12.117+deb13-amd64 -> 6.12.117_deb13-amd64."""
    return "".join(TAG_CHARACTER_MAP.get(c, c) for c in raw)


def tag_problem(tag: str) -> str | None:
    """Why a tag is invalid, or None."""
    if len(tag) > MAX_TAG_LENGTH:
        return f"is {len(tag)} characters long; a tag holds at most {MAX_TAG_LENGTH}"
    if not TAG_RE.match(tag):
        bad = sorted({c for c in tag if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        return f"contains {''.join(bad)!r}; a tag holds only [A-Za-z0-9_.-]"
    return None
