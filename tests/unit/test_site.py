"""The library page from status items: every pair with its state in words, grouped by series,
every value escaped (hostile labels and failure causes stay text), valid HTML5 (html5lib's
strict parser), nothing that makes a request when opened. The page as a browser draws it is
tested in tests/integration/test_site.py."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import html5lib
import pytest

from habana_tasks.build import labels
from habana_tasks.build.plan import Action, plan_job
from habana_tasks.config.tags import image_tag
from habana_tasks.maintenance import site
from habana_tasks.maintenance.status import State, TargetStatus, statuses
from habana_tasks.registry.client import Existence, RemoteImage
from tests.invoke_cli import invoke
from tests.samples import CONFIG, INPUTS, TARGET

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RUN = site.RunInfo(NOW, "habana-tasks 0.1.0", "versions.toml", "ab" * 32, "r.example/lib/drv")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&"\''


def item(kernel: str, driver: str, state: State, **fields: object) -> TargetStatus:
    tag = image_tag(driver, kernel)
    base = TargetStatus(kernel, driver, tag, f"r.example/lib/drv:{tag}", state, state.value)
    return replace(base, **fields)  # type: ignore[arg-type]


ITEMS = [
    item(
        "5.14.0-427.13.1.el9_4.x86_64",
        "1.16.0-526",
        State.CURRENT,
        digest="sha256:" + "1" * 64,
        size=3_000_000,
        created="2026-11-30T00:00:00Z",
        load_test_boot="secure-boot",
        signing="signed by habana library",
    ),
    item("5.14.0-427.13.1.el9_4.x86_64", "1.17.0-495", State.STALE, reason="toolkit changed"),
    item("6.1.0-55-amd64", "1.16.0-526", State.MISSING, reason="not in the repository"),
    item(
        "6.1.0-58-amd64",
        "1.16.0-526",
        State.UNSIGNED,
        reason="up to date, no signature by the library's key: signed, not rebuilt",
    ),
    item("6.1.0-56-rt-amd64", "1.16.0-526", State.FAILING, reason="a Secure Boot node would"),
    item("6.1.0-57-amd64", "1.17.0-495", State.UNKNOWN, reason="HTTP 503 after 4 attempt(s)"),
]


def parse(page: str) -> None:
    html5lib.HTMLParser(strict=True).parse(page)  # raises on any parse error


def test_every_pair_is_on_the_page_with_its_state_in_words_grouped_by_series() -> None:
    page = site.render(ITEMS, RUN)
    parse(page)
    for it in ITEMS:
        assert f'class="cell {it.state.value}"' in page and it.kernel in page
    assert '<h2 id="series-5.14">' in page and '<h2 id="series-6.1">' in page
    assert '<a href="#series-6.1">6.1</a>' in page
    # The summary first: one row per state with its count.
    assert page.index("Pairs by state") < page.index("series-5.14")
    for state in State:
        assert re.search(rf">{state.value}</td><td>1</td>", page), state
    assert "load-tested: yes (secure-boot); signed by habana library; 3.0 MB; 3 day(s) old" in page
    assert f'href="https://r.example/v2/lib/drv/manifests/sha256:{"1" * 64}"' in page
    assert "ab" * 32 in page and "habana-tasks 0.1.0" in page


def test_a_pair_replacing_the_kernels_own_driver_says_so_on_the_page() -> None:
    """A Debian 13 kernel (`+` in its release) whose own habanalabs the image replaces."""
    trixie = item(
        "6.12.117+deb13-amd64",
        "6.12.0-1",
        State.CURRENT,
        digest="sha256:" + "2" * 64,
        replaces=("habanalabs",),
    )
    page = site.render([*ITEMS, trixie], RUN)
    parse(page)
    assert '<h2 id="series-6.12">' in page and "6.12.117+deb13-amd64" in page
    assert "replaces the kernel&#x27;s own habanalabs" in page
    assert page.count("replaces the kernel") == 1  # only where it does


@pytest.mark.parametrize("field", ["reason", "signing", "cosign"])
def test_a_hostile_value_stays_text(field: str) -> None:
    hostile = replace(ITEMS[0], state=State.STALE, **{field: HOSTILE})  # type: ignore[arg-type]
    page = site.render([hostile], replace(RUN, repository=HOSTILE))
    parse(page)
    assert "<script" not in page and "<img" not in page
    assert html.escape(HOSTILE, quote=True) in page  # shown, as text


def test_a_hostile_created_label_is_an_unknown_age() -> None:
    page = site.render([replace(ITEMS[0], created=HOSTILE)], RUN)
    assert "age unknown" in page and "<script" not in page


def test_the_page_makes_no_request_when_opened() -> None:
    page = site.render(ITEMS, RUN)
    assert not re.search(r"<(script|img|link|iframe|object|embed)\b|\bsrc=|@import|url\(", page)


def test_coverage_says_covered_or_not_and_why() -> None:
    answers = [
        site.Coverage("OpenShift 4.16.12 (x86_64)", "5.14.0-427.13.1.el9_4.x86_64", "1.16.0-526",
                      True, "ready"),
        site.Coverage("node worker-1", "6.1.0-55-amd64", "1.16.0-526", False, "no image"),
    ]  # fmt: skip
    page = site.render(ITEMS, RUN, answers)
    parse(page)
    assert '<td class="current">covered</td><td>ready</td>' in page
    assert '<td class="failing">not covered</td><td>no image</td>' in page


def test_the_versions_file_is_shown_relative_to_the_checkout(tmp_path: Path) -> None:
    inside = tmp_path / "examples" / "versions.toml"
    assert site.shown_path(inside, tmp_path) == "examples/versions.toml"
    assert site.shown_path(Path("/elsewhere/v.toml"), tmp_path) == "/elsewhere/v.toml"


def test_hostile_labels_read_from_the_registry_stay_text() -> None:
    """Labels as the registry returns them (a signer, a cosign listing) and a failure record's
    cause, through status's own reading of them, onto the page."""
    remote = RemoteImage(
        TARGET.image,
        Existence.PRESENT,
        "sha256:" + "2" * 64,
        {
            **labels.image_labels(CONFIG, TARGET, INPUTS, HOSTILE, "secure-boot"),
            labels.SIGNING: "signed",
            labels.SIGNER: HOSTILE,
        },
    )
    job = replace(plan_job(TARGET, INPUTS, remote), action=Action.HOLD, reason=HOSTILE)
    (found,) = statuses([job], {TARGET.tag: remote})
    page = site.render([replace(found, cosign=HOSTILE)], RUN)
    parse(page)
    assert "<script" not in page and "<img" not in page
    assert page.count(html.escape(HOSTILE, quote=True)) >= 3  # signer, cause, cosign: as text


def test_an_output_whose_index_is_not_a_file_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_side_effects: list[str]
) -> None:
    """The page's own file is checked with the folder, before status asks the registry."""
    (tmp_path / "index.html").mkdir()
    code, _, err = invoke(["site", "--output", str(tmp_path)], capsys)
    assert code == 2, err
    assert err.strip() == (
        f"error: --output {str(tmp_path)!r}: expected a folder whose index.html is a file or "
        f"absent ({tmp_path / 'index.html'} is not a file)"
    )
    assert no_side_effects == []


def test_a_nodes_file_that_is_not_a_node_list_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_side_effects: list[str]
) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text('{"items": []}')
    code, _, err = invoke(["site", "--output", str(tmp_path), "--nodes", str(nodes)], capsys)
    assert code == 2, err
    assert err.strip() == f"error: {nodes}: items: expected a non-empty list of nodes"
    assert no_side_effects == []


@pytest.mark.parametrize(
    ("created", "said"),
    [
        ("2026-11-30T00:00:00Z", "3 day(s) old (2026-11-30T00:00:00Z)"),
        ("1970-01-01T00:00:00Z", "no build date (SOURCE_DATE_EPOCH unset)"),
        ("yesterday", "age unknown"),
        (None, "age unknown"),
    ],
)
def test_the_age_is_said_from_the_created_label(created: str | None, said: str) -> None:
    assert site.age(created, NOW) == said
    page = site.render([replace(ITEMS[0], created=created)], RUN)
    assert html.escape(said) in page
