"""The CI fan-out: pending pairs grouped into at most N batches (a GitHub Actions matrix holds at
most 256 jobs), the pairs of one kernel always in one batch, so that a job pulls each toolkit
once; and the same plan as a Markdown table for a job summary."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass

from habana_tasks.core.errors import UsageError
from habana_tasks.maintenance.status import State, TargetStatus

DEFAULT_MAX_JOBS = 256


@dataclass(frozen=True)
class Batch:
    """One matrix job: the kernels it covers and the tags it builds (`build-all --only`)."""

    kernels: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def selector(self) -> str:
        return ",".join(self.tags)

    @property
    def cache_key(self) -> str:
        """The batch's name for actions/cache: the same for the same kernels, bounded (a key
        holds at most 512 characters and no comma, however many kernels a batch has)."""
        digest = hashlib.sha256(" ".join(self.kernels).encode()).hexdigest()[:16]
        return f"{self.kernels[0][:100]}-{len(self.kernels)}-{digest}"

    @property
    def name(self) -> str:
        more = f" +{len(self.kernels) - 1} kernel(s)" if len(self.kernels) > 1 else ""
        return f"{self.kernels[0]}{more}: {len(self.tags)} pair(s)"


def batches(items: Sequence[TargetStatus], max_jobs: int) -> tuple[Batch, ...]:
    """The pending pairs in at most `max_jobs` batches, as even in pairs as whole kernels allow:
    the largest kernels first, each into the batch holding the fewest pairs so far."""
    by_kernel: dict[str, list[str]] = {}
    for item in items:
        if item.pending:
            by_kernel.setdefault(item.kernel, []).append(item.tag)
    count = min(max_jobs, len(by_kernel))
    heap = [(0, index) for index in range(count)]  # (pairs so far, batch index)
    members: list[list[str]] = [[] for _ in range(count)]
    for kernel in sorted(by_kernel, key=lambda k: (-len(by_kernel[k]), k)):
        load, index = heapq.heappop(heap)
        members[index].append(kernel)
        heapq.heappush(heap, (load + len(by_kernel[kernel]), index))
    return tuple(
        Batch(tuple(sorted(kernels)), tuple(t for k in sorted(kernels) for t in by_kernel[k]))
        for kernels in members
    )


def github_matrix(found: Sequence[Batch], limit: int) -> str:
    """The batches as a GitHub Actions matrix (`fromJSON` of one line); a batch whose selector
    would not fit one argument is refused, naming the way out."""
    for batch in found:
        if len(batch.selector) > limit:
            raise UsageError(
                f"a batch of {len(batch.tags)} pairs would pass {len(batch.selector)} characters "
                f"to --only (at most {limit})",
                hint="raise --max-jobs",
            )
    include = [
        {
            "name": batch.name,
            "kernels": " ".join(batch.kernels),
            "cache_key": batch.cache_key,
            "only": batch.selector,
            "pairs": len(batch.tags),
        }
        for batch in found
    ]
    return json.dumps({"include": include}, separators=(",", ":"))


def markdown_plan(items: Sequence[TargetStatus], found: Sequence[Batch]) -> str:
    """What a run would build, in which job and why; and the pairs held back (failed before
    with the same inputs): a pull request's plan, or a scheduled run's, in its job summary."""
    job_of = {tag: index + 1 for index, batch in enumerate(found) for tag in batch.tags}
    pending = [i for i in items if i.pending]
    held = [i for i in items if i.state is State.FAILING]
    lines = [
        f"## Plan: {len(pending)} pending pair(s) in {len(found)} job(s)"
        + (f", {len(held)} held" if held else ""),
        "",
    ]
    if pending:
        lines += ["| job | kernel | driver | why |", "| --- | --- | --- | --- |"]
        for item in sorted(pending, key=lambda i: (job_of[i.tag], i.kernel, i.driver)):
            stale = item.state in (State.STALE, State.UNSIGNED)
            why = cell(item.reason) if stale else item.state.value
            lines.append(f"| {job_of[item.tag]} | `{item.kernel}` | {item.driver} | {why} |")
        lines.append("")
    if held:
        lines += [
            "Held, failed before with the same inputs (`invoke build-all --retry-failed` "
            "builds them again):",
            "",
            "| kernel | driver | failure |",
            "| --- | --- | --- |",
        ]
        for item in sorted(held, key=lambda i: (i.kernel, i.driver)):
            lines.append(f"| `{item.kernel}` | {item.driver} | {cell(item.reason)} |")
        lines.append("")
    return "\n".join(lines)


def cell(text: str) -> str:
    """Text in one Markdown table cell: no pipe or line break ends it early."""
    return " ".join(text.split()).replace("|", "\\|")
