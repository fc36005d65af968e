"""The library at a glance: one static, self-contained HTML page (inline CSS, no script, no
request to any host when opened) made from the state `status` resolves. Kernels are rows, grouped
by series with an anchor each; driver versions are columns; every cell says its state in words
and colour, how the image was proven, its signing, size and age, and links to the image by
digest. Pure: every value is escaped here, once, and the page is tested as people see it."""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from habana_tasks.build import labels
from habana_tasks.build.plan import replacing_words
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.core.errors import EXIT_CODES
from habana_tasks.maintenance.status import State, TargetStatus, tested_by

STATE_ORDER = (
    State.CURRENT,
    State.STALE,
    State.UNSIGNED,
    State.MISSING,
    State.FAILING,
    State.UNKNOWN,
)
SERIES_RE = re.compile(r"^([0-9]+\.[0-9]+)")
NOT_IN_ANCHOR_RE = re.compile(r"[^A-Za-z0-9._-]")
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #bbb;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#eee}
td.cell{min-width:12em}
.current{background:#d9f2d9}.stale,.unsigned{background:#fff1c2}.missing{background:#ececec}
.failing{background:#f9d0d0}.unknown{background:#e5d7f5}
.state{font-weight:600;text-transform:uppercase;font-size:.85em}
.detail{font-size:.85em;color:#333;word-break:break-word}
nav a{margin-right:.8em}
footer{margin-top:2em;font-size:.85em;color:#444}
"""


@dataclass(frozen=True)
class RunInfo:
    """The run that produced the page."""

    generated: datetime
    tool_version: str
    versions_file: str
    versions_sha256: str
    repository: str
    insecure: frozenset[str] = frozenset()  # registries reached over plain HTTP


@dataclass(frozen=True)
class Coverage:
    """One OpenShift release or node and driver: covered, or not and why (preflight's answer)."""

    origin: str
    kernel: str
    driver: str
    covered: bool
    detail: str


def e(value: object) -> str:
    """Every value that reaches the page goes through here."""
    return html.escape(str(value), quote=True)


def shown_path(path: Path, root: Path) -> str:
    """A path as a published page shows it: relative to the checkout when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def series_of(kernel: str) -> str:
    """The kernel series a release belongs to (its major.minor), for grouping and anchors."""
    match = SERIES_RE.match(kernel)
    return match[1] if match else "other"


def anchor(name: str) -> str:
    """An id made only of safe characters (a value never becomes markup or an attribute break)."""
    return "series-" + NOT_IN_ANCHOR_RE.sub("-", name)


def age(created: str | None, now: datetime) -> str:
    """The image's age from its `created` label: SOURCE_DATE_EPOCH, so 0 (1970) says only that
    the build was given no date, which the page says as such."""
    epoch = labels.epoch_of(created) if created else None
    if epoch is None or epoch < 0:
        return "age unknown"
    if epoch == 0:
        return f"no build date ({labels.SOURCE_DATE_EPOCH} unset)"
    days = int((now.timestamp() - epoch) // 86400)
    return f"{days} day(s) old ({created})"


def image_link(item: TargetStatus, insecure: frozenset[str]) -> str | None:
    """The image by digest, as a registry API URL (what any client can fetch)."""
    if not item.digest:
        return None
    ref = ImageReference.parse(item.image)
    scheme = "http" if ref.registry in insecure else "https"
    return f"{scheme}://{ref.api_host}/v2/{ref.repository}/manifests/{item.digest}"


def cell(item: TargetStatus, now: datetime, insecure: frozenset[str]) -> str:
    state = item.state.value
    lines = [f'<span class="state">{e(state)}</span>']
    if item.state is not State.CURRENT:
        lines.append(f'<span class="detail">{e(item.reason)}</span>')
    elif item.replaces:  # a node's own driver gives way: worth seeing at a glance
        lines.append(f'<span class="detail">{e(replacing_words(item.replaces))}</span>')
    if item.digest:
        size = f"{item.size / 1e6:.1f} MB" if item.size else "size unknown"
        proven = tested_by(item.load_test_boot)
        facts = f"load-tested: {proven}; {item.signing or 'signing unknown'}; {size}"
        facts += f"; cosign: {item.cosign}" if item.cosign else ""
        lines.append(f'<span class="detail">{e(facts)}; {e(age(item.created, now))}</span>')
        link = image_link(item, insecure)
        digest = labels.short_digest(item.digest)
        if link:
            lines.append(f'<a href="{e(link)}" title="{e(item.image)}">{e(digest)}</a>')
    return f'<td class="cell {e(state)}">' + "<br>".join(lines) + "</td>"


def summary_table(items: Sequence[TargetStatus]) -> str:
    counts = Counter(i.state for i in items)
    rows = "".join(
        f'<tr><td class="{e(s.value)}">{e(s.value)}</td><td>{counts.get(s, 0)}</td></tr>'
        for s in STATE_ORDER
    )
    return (
        "<table><caption>Pairs by state</caption><tr><th>state</th><th>pairs</th></tr>"
        f"{rows}<tr><th>all</th><th>{len(items)}</th></tr></table>"
    )


def series_tables(
    items: Sequence[TargetStatus], now: datetime, insecure: frozenset[str]
) -> tuple[str, list[str]]:
    """One table per kernel series (rows: kernels, columns: drivers) and the series' names."""
    drivers = sorted({i.driver for i in items})
    by_series: dict[str, dict[str, dict[str, TargetStatus]]] = defaultdict(dict)
    for item in items:
        by_series[series_of(item.kernel)].setdefault(item.kernel, {})[item.driver] = item
    parts: list[str] = []
    for name in sorted(by_series):
        kernels = by_series[name]
        head = "".join(f"<th>{e(d)}</th>" for d in drivers)
        rows = []
        for kernel in sorted(kernels):
            cells = "".join(
                cell(kernels[kernel][d], now, insecure)
                if d in kernels[kernel]
                else "<td>not listed</td>"
                for d in drivers
            )
            rows.append(f"<tr><th>{e(kernel)}</th>{cells}</tr>")
        parts.append(
            f'<h2 id="{anchor(name)}">Kernel series {e(name)}</h2>'
            f"<table><tr><th>kernel</th>{head}</tr>{''.join(rows)}</table>"
        )
    return "".join(parts), sorted(by_series)


def coverage_table(answers: Iterable[Coverage]) -> str:
    rows = "".join(
        f"<tr><td>{e(a.origin)}</td><td>{e(a.kernel)}</td><td>{e(a.driver)}</td>"
        f'<td class="{"current" if a.covered else "failing"}">'
        f"{'covered' if a.covered else 'not covered'}</td><td>{e(a.detail)}</td></tr>"
        for a in answers
    )
    if not rows:
        return ""
    return (
        '<h2 id="coverage">Coverage</h2><table><tr><th>release or node</th><th>kernel</th>'
        f"<th>driver</th><th>covered</th><th>why</th></tr>{rows}</table>"
    )


def render(
    items: Sequence[TargetStatus],
    run: RunInfo,
    coverage: Sequence[Coverage] = (),
    problems: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> str:
    """The whole page."""
    tables, series = series_tables(items, run.generated, run.insecure)
    nav = "".join(f'<a href="#{anchor(s)}">{e(s)}</a>' for s in series)
    meaning = "".join(f"<tr><td>{e(c)}</td><td>{e(m)}</td></tr>" for c, m in EXIT_CODES)
    troubles = "".join(f"<li>{e(p)}</li>" for p in problems)
    facts = {
        "generated": run.generated.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "tool": run.tool_version,
        "versions file": f"{run.versions_file} (sha256 {run.versions_sha256})",
        **(extra or {}),
    }
    footer = "".join(f"<div>{e(k)}: {e(v)}</div>" for k, v in facts.items())
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(run.repository)}: habanalabs driver images</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f"<h1>habanalabs driver images in {e(run.repository)}</h1>"
        f"{summary_table(items)}<nav>Kernel series: {nav}</nav>"
        + (f"<h2>Problems</h2><ul>{troubles}</ul>" if troubles else "")
        + f"{coverage_table(coverage)}{tables}"
        f"<footer>{footer}<table><caption>Exit codes</caption>{meaning}</table></footer>"
        "</body></html>\n"
    )
