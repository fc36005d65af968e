from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from habana_tasks.build import labels
from habana_tasks.build.driver_package import BuildExclusive
from habana_tasks.build.kernel_index import parse_index
from habana_tasks.build.plan import plan_job, refused_by_node, replacing
from habana_tasks.core.errors import Failure, HabanaError
from habana_tasks.core.http_client import HTTPClient, RetryPolicy
from habana_tasks.maintenance import discover, kmm, prune
from habana_tasks.maintenance.matrix import batches, github_matrix
from habana_tasks.maintenance.prune import (
    UNTAGGED,
    PruneItem,
    TagInfo,
    Untagged,
    parse_time,
    prune_plan,
)
from habana_tasks.maintenance.status import State, orphan_tags, statuses, to_markdown
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage
from habana_tasks.registry.manifests import OCI_MANIFEST
from habana_tasks.trust import attachments
from tests.fake_podman import library
from tests.fake_registry import FakeRegistry
from tests.kmm_schema import kmm_load_sequence, schema_errors
from tests.samples import CONFIG, INPUTS, TARGET

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, tzinfo=UTC)

UNAVAILABLE = Failure("registry state", "HTTP 503 after 4 attempt(s)", transient=True)


def test_prune_never_touches_named_tags_or_their_digests() -> None:
    tags = {
        "1.0-k1": TagInfo("sha256:a", NOW),
        "alias": TagInfo("sha256:a", NOW - timedelta(days=400)),
        "0.9-k1": TagInfo("sha256:b", NOW - timedelta(days=100)),
        "0.9-k2": TagInfo("sha256:c", NOW - timedelta(days=5)),
    }
    assert prune_plan(tags, {"1.0-k1"}, now=NOW) == [
        PruneItem("0.9-k1", "sha256:b", "no longer named by the matrix"),
        PruneItem("0.9-k2", "sha256:c", "no longer named by the matrix"),
    ]
    assert prune_plan(tags, {"1.0-k1"}, older_than_days=90, now=NOW) == [
        PruneItem("0.9-k1", "sha256:b", "not named, older than 90 days"),
    ]
    assert prune_plan(tags, set(tags), now=NOW) == []


def test_cosign_attachments_stay_with_a_kept_image_and_go_with_a_pruned_one() -> None:
    kept, old, gone = ("a" * 64, "b" * 64, "c" * 64)
    tags = {
        "1.0-k1": TagInfo(f"sha256:{kept}", NOW),
        f"sha256-{kept}.sig": TagInfo("sha256:s1", None),
        f"sha256-{kept}.att": TagInfo("sha256:a1", None),
        "0.9-k1": TagInfo(f"sha256:{old}", NOW - timedelta(days=100)),
        f"sha256-{old}.sig": TagInfo("sha256:s2", None),
        # An image the registry no longer holds: its attachments are left over.
        f"sha256-{gone}.att": TagInfo("sha256:a3", None),
    }
    absent = {f"sha256:{gone}": Untagged(present=False)}
    assert prune_plan(tags, {"1.0-k1"}, now=NOW, untagged=absent) == [
        PruneItem("0.9-k1", f"sha256:{old}", "no longer named by the matrix"),
        PruneItem(
            f"sha256-{old}.sig",
            "sha256:s2",
            "cosign attachment of an image pruned",
            f"sha256:{old}",
        ),
        PruneItem(
            f"sha256-{gone}.att",
            "sha256:a3",
            "cosign attachment of an image gone",
            f"sha256:{gone}",
        ),
    ]
    # Within the rollback window the old image stays, and so does its signature.
    assert prune_plan(tags, {"1.0-k1"}, older_than_days=365, now=NOW, untagged=absent) == [
        PruneItem(
            f"sha256-{gone}.att",
            "sha256:a3",
            "cosign attachment of an image gone",
            f"sha256:{gone}",
        ),
    ]
    # status: the attachments of a named tag's image are not "unnamed tags"; the others are.
    named = replace(TARGET, tag="1.0-k1")
    assert orphan_tags(tags, [named], [f"sha256:{kept}"]) == [
        "0.9-k1",
        f"sha256-{old}.sig",
        f"sha256-{gone}.att",
    ]


def test_an_untagged_image_keeps_its_attachments_until_it_goes_and_a_publishing_one_stays() -> None:
    """An image no tag names (still pulled by digest, say) goes under the rollback window like a
    tag, its attachments after it; one signed within the lease may be a run's, between its
    signature and its tag: it is never touched."""
    old, young, publishing = ("d" * 64, "e" * 64, "f" * 64)
    tags = {
        "1.0-k1": TagInfo("sha256:" + "a" * 64, NOW),
        **{
            f"sha256-{d}.sig": TagInfo(f"sha256:s{i}", None)
            for i, d in enumerate((old, young, publishing))
        },
    }
    untagged = {
        f"sha256:{old}": Untagged(True, NOW - timedelta(days=100), NOW - timedelta(days=99)),
        f"sha256:{young}": Untagged(True, NOW - timedelta(days=5), NOW - timedelta(days=5)),
        f"sha256:{publishing}": Untagged(True, NOW - timedelta(days=300), NOW - timedelta(hours=1)),
    }
    windowed = prune_plan(tags, {"1.0-k1"}, older_than_days=30, now=NOW, untagged=untagged)
    assert windowed == [
        PruneItem(UNTAGGED, f"sha256:{old}", "not named, older than 30 days"),
        PruneItem(
            f"sha256-{old}.sig",
            "sha256:s0",
            "cosign attachment of an image pruned",
            f"sha256:{old}",
        ),
    ]
    everything = prune_plan(tags, {"1.0-k1"}, now=NOW, untagged=untagged)
    assert [(i.tag, i.digest) for i in everything] == [
        (UNTAGGED, f"sha256:{old}"),
        (UNTAGGED, f"sha256:{young}"),
        (f"sha256-{old}.sig", "sha256:s0"),
        (f"sha256-{young}.sig", "sha256:s1"),
    ]
    assert everything[1].reason == "no longer tagged"


def test_status_states_and_pending_matrix() -> None:
    current = replace(TARGET, tag="current", kernel="k-current")
    present = labels.image_labels(CONFIG, current, INPUTS, "2026-01-01T00:00:00Z", "plain")
    remote = {
        "current": RemoteImage("x", Existence.PRESENT, "sha256:1", present, 10),
        "stale": RemoteImage(
            "x", Existence.PRESENT, "sha256:2", {**present, labels.FINGERPRINT: "old"}
        ),
        "missing": RemoteImage("x", Existence.ABSENT),
        "unknown": RemoteImage(
            "x",
            Existence.UNKNOWN,
            failure=UNAVAILABLE,
        ),
    }
    jobs, remotes = [], {}
    for name, state in remote.items():
        target = replace(TARGET, tag=name, kernel=f"k-{name}")
        jobs.append(plan_job(target, INPUTS, state, require_load_test=True))
        remotes[name] = state
    items = statuses(jobs, remotes)
    assert [(s.state, s.reason) for s in items] == [
        (State.CURRENT, items[0].reason),
        (State.STALE, "build recipe changed"),
        (State.MISSING, "not in the repository"),
        (State.UNKNOWN, "HTTP 503 after 4 attempt(s)"),
    ]
    assert items[0].load_tested and items[0].created == "2026-01-01T00:00:00Z"
    matrix = json.loads(github_matrix(batches(items, 256), 1000))
    assert [{k: v for k, v in job.items() if k != "cache_key"} for job in matrix["include"]] == [
        {"name": "k-missing: 1 pair(s)", "kernels": "k-missing", "only": "missing", "pairs": 1},
        {"name": "k-stale: 1 pair(s)", "kernels": "k-stale", "only": "stale", "pairs": 1},
    ]
    assert [job["cache_key"][:8] for job in matrix["include"]] == ["k-missin", "k-stale-"]
    assert (
        "| `k-current` | 6.1.0-1 | `r.example/lib/drv@sha256:1` | - | yes (plain) |"
        in to_markdown(items, "r")
    )
    assert orphan_tags(
        ["current", "old-1", "stale"], [replace(TARGET, tag=t) for t in ("current", "stale")]
    ) == ["old-1"]


def test_kmm_module_encodes_load_order_and_firmware_path() -> None:
    nic = replace(TARGET, modules=("habanalabs", "habanalabs_cn", "habanalabs_ib", "habanalabs_en"))
    module = kmm.module_manifest([nic], with_firmware=True)
    assert schema_errors(module) == []
    modprobe = module["spec"]["moduleLoader"]["container"]["modprobe"]
    # The CRD: upmost module first, then what it depends on; moduleName is the first element.
    assert modprobe["moduleName"] == "habanalabs_en"
    assert modprobe["modulesLoadingOrder"] == [
        "habanalabs_en",
        "habanalabs_ib",
        "habanalabs_cn",
        "habanalabs",
    ]
    assert kmm_load_sequence(modprobe) == list(nic.modules)
    # The image ships /opt/lib/firmware/habanalabs/gaudi/<file>; the driver asks for
    # habanalabs/gaudi/<file>; KMM copies the contents of firmwarePath: so /opt/lib/firmware.
    assert modprobe["firmwarePath"] == "/opt/lib/firmware"
    assert module["spec"]["moduleLoader"]["container"]["kernelMappings"] == [
        {"literal": TARGET.kernel, "containerImage": TARGET.image}
    ]
    assert yaml.safe_load(yaml.safe_dump(module)) == module
    assert module["metadata"]["annotations"] == {"habana-ai-driver.io/image-flavour": "minimal"}
    kmm1 = kmm.module_manifest([replace(nic, flavour="kmm1")])
    assert schema_errors(kmm1) == []
    assert kmm1["metadata"]["annotations"]["habana-ai-driver.io/image-flavour"] == "kmm1"


@pytest.mark.parametrize(
    "modules",
    [
        ("habanalabs",),
        ("a", "b"),
        ("first", "second", "third"),
        ("habanalabs", "habana_example_ib"),
    ],
)
def test_independent_modules_load_in_their_declared_order(modules: tuple[str, ...]) -> None:
    module = kmm.module_manifest([replace(TARGET, modules=modules)])
    assert schema_errors(module) == []
    modprobe = module["spec"]["moduleLoader"]["container"]["modprobe"]
    assert kmm_load_sequence(modprobe) == list(modules)
    assert ("modulesLoadingOrder" in modprobe) == (len(modules) > 1)


def test_the_schema_check_catches_what_kmm_would_refuse_or_drop() -> None:
    module = kmm.module_manifest([TARGET], with_firmware=True)
    container = module["spec"]["moduleLoader"]["container"]
    container["modprobe"]["firmwarePaht"] = "/opt/lib/firmware"  # pruned silently by default
    container["modprobe"]["modulesLoadingOrder"] = "habanalabs_cn,habanalabs"
    module["spec"].pop("selector")
    errors = schema_errors(module)
    assert any("'firmwarePaht' was unexpected" in e for e in errors), errors
    assert any(
        "modulesLoadingOrder: 'habanalabs_cn,habanalabs' is not of type" in e for e in errors
    )
    assert any("'selector' is a required property" in e for e in errors), errors
    # The loading semantics: moduleName must be the list's first element.
    modprobe = {"moduleName": "habanalabs", "modulesLoadingOrder": ["habanalabs_cn", "habanalabs"]}
    with pytest.raises(AssertionError, match="first"):
        kmm_load_sequence(modprobe)


def test_release_selection_and_payload_parsing() -> None:
    tags = [
        "4.14.10-x86_64",
        "4.14.2-x86_64",
        "4.14.2-aarch64",
        "4.15.0-x86_64",
        "4.1.3-x86_64",
        "latest",
    ]
    assert discover.select_releases(tags, ["4.14"], ["x86_64"]) == [
        ("4.14.2", "x86_64", "4.14.2-x86_64"),
        ("4.14.10", "x86_64", "4.14.10-x86_64"),
    ]
    stream = {"spec": {"tags": [{"name": "driver-toolkit", "from": {"name": "q.io/dtk@sha256:1"}}]}}
    assert discover.toolkit_reference(json.dumps(stream).encode(), "r") == "q.io/dtk@sha256:1"
    assert discover.toolkit_reference(b'{"spec": {"tags": []}}', "r") is None
    with pytest.raises(
        HabanaError, match="r: release-manifests/image-references is not an ImageStream"
    ):
        discover.toolkit_reference(b"[]", "r")
    body = json.dumps(
        {
            "KERNEL_VERSION": "5.14.0-284.el9",
            "RT_KERNEL_VERSION": "5.14.0-284.rt14.el9",
            "RHEL_VERSION": "9.2",
        }
    ).encode()
    assert discover.parse_toolkit_release(body, "aarch64", "w") == (
        "5.14.0-284.el9.aarch64",
        "5.14.0-284.rt14.el9.aarch64",
        "9.2",
    )


def test_versions_file_edit_keeps_comments_and_order() -> None:
    text = (ROOT / "versions.toml").read_text()
    new, added, updated = discover.update_versions(
        text,
        {"4.18.0-372.19.1.el8_6.x86_64": ["4.11.2"], "5.14.0-1.el9_2.x86_64": ["4.13.1"]},
        ["1.6.0-439"],
    )
    assert (added, updated) == (["5.14.0-1.el9_2.x86_64"], ["4.18.0-372.19.1.el8_6.x86_64"])
    assert new.startswith(text.split("[[kernels]]")[0])  # every comment above the kernels kept
    assert new.index('release = "4.18.0') < new.index('release = "5.14.0-1.el9_2.x86_64"')
    assert 'openshift = ["4.11.2"]' in new
    with pytest.raises(HabanaError, match="no driver versions are known"):
        discover.update_versions(text, {"5.14.0-2.el9_2.x86_64": ["4.13.2"]}, [])


def test_kmm_signs_in_the_cluster_with_every_module_in_files_to_sign() -> None:
    nic = replace(TARGET, modules=("habanalabs", "habanalabs_cn"))
    sign = kmm.KmmSigning("habana-signing-key", "habana-signing-cert", "r.example/lib/drv-signed")
    module = kmm.module_manifest([nic], sign=sign)
    assert schema_errors(module) == []
    (mapping,) = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert mapping["containerImage"] == f"r.example/lib/drv-signed:{nic.tag}"
    assert mapping["sign"] == {
        "unsignedImage": nic.image,
        "keySecret": {"name": "habana-signing-key"},
        "certSecret": {"name": "habana-signing-cert"},
        "filesToSign": [
            f"/opt/lib/modules/{nic.kernel}/extra/habanalabs.ko",
            f"/opt/lib/modules/{nic.kernel}/extra/habanalabs_cn.ko",
        ],
    }
    # KMM: every path in filesToSign must be under dirName.
    dir_name = module["spec"]["moduleLoader"]["container"]["modprobe"]["dirName"]
    assert all(path.startswith(dir_name + "/") for path in mapping["sign"]["filesToSign"])


def test_an_image_without_a_source_date_is_never_older_than_a_window() -> None:
    """Reproducible images built without SOURCE_DATE_EPOCH say 1970: that is no age."""
    assert parse_time("1970-01-01T00:00:00Z") is None
    assert parse_time("2026-01-01T00:00:00Z") is not None
    tags = {"1.0-old": TagInfo("sha256:1", parse_time("1970-01-01T00:00:00Z"))}
    assert prune_plan(tags, set(), older_than_days=1, now=NOW) == []


def test_kmm_module_names_the_node_kernel_args_and_how_openshift_gives_them() -> None:
    rt = replace(TARGET, kernel="6.1.0-56-rt-amd64", node_kernel_args=("efi=runtime",))
    module = kmm.module_manifest([TARGET, rt])
    assert schema_errors(module) == []
    annotations = module["metadata"]["annotations"]
    assert annotations[kmm.KERNEL_ARGS_ANNOTATION] == "6.1.0-56-rt-amd64: efi=runtime"
    note = kmm.machine_config_note([TARGET, rt])
    assert all(line.startswith("# ") for line in note.splitlines())
    assert "kind: MachineConfig" in note and "spec: {kernelArguments: [efi=runtime]}" in note
    assert yaml.safe_load(note + yaml.safe_dump(module)) == module  # comments only
    assert kmm.machine_config_note([TARGET]) == ""
    assert (
        kmm.KERNEL_ARGS_ANNOTATION not in kmm.module_manifest([TARGET])["metadata"]["annotations"]
    )


def test_status_shows_a_flagged_pair_as_failing_with_the_reason() -> None:
    absent = RemoteImage(TARGET.image, Existence.ABSENT)
    flagged = refused_by_node(plan_job(TARGET, INPUTS, absent), ["EFI runtime services are off"])
    (item,) = statuses([flagged], {TARGET.tag: absent})
    assert (item.state, item.reason) == (State.FAILING, flagged.reason)
    assert "would refuse its modules" in item.reason


def test_status_shows_pairs_the_plan_refuses_as_failing_and_what_a_current_one_replaces() -> None:
    """A pair the package excludes, or whose kernel builds the module in, will never be built:
    failing, with the plan's words; a current image that replaces the kernel's own driver
    says so."""
    absent = RemoteImage(TARGET.image, Existence.ABSENT)
    excluded = plan_job(TARGET, replace(INPUTS, exclusive=BuildExclusive("deb13")), absent)
    built_in = replacing(plan_job(TARGET, INPUTS, absent), parse_index("", "habanalabs.ko\n", ""))
    for job in (excluded, built_in):
        (item,) = statuses([job], {TARGET.tag: absent})
        assert (item.state, item.reason) == (State.FAILING, job.reason)
    present = RemoteImage(
        TARGET.image,
        Existence.PRESENT,
        digest="sha256:" + "1" * 64,
        labels={labels.FINGERPRINT: labels.fingerprint(TARGET, INPUTS),
                labels.IN_TREE_REPLACED: "habanalabs,gaudi_rival"},
    )  # fmt: skip
    (item,) = statuses([plan_job(TARGET, INPUTS, present)], {TARGET.tag: present})
    assert item.state is State.CURRENT
    assert item.reason.endswith("; replaces the kernel's own habanalabs, gaudi_rival")


def test_an_image_that_could_not_be_deleted_keeps_its_attachments(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """The registry refuses to delete the pruned image: its signature stays (it goes only once
    its image is gone), named as kept."""
    cfg = library(fake, tmp_path)
    old = fake.add_image("library/driver", "0.9-old", {}, OCI_MANIFEST)
    signature = attachments.tags_of(old)[0]
    fake.add_image("library/driver", signature, {"a": "signature"}, OCI_MANIFEST)

    def refuse(path: str) -> tuple[int, dict[str, str], bytes] | None:
        return (500, {}, b"") if path.endswith(f"/manifests/{old}") else None

    fake.hook = refuse
    client = RegistryClient([fake.host], HTTPClient(RetryPolicy(attempts=1)))
    _, outcomes = prune.prune_library(cfg, client, older_than_days=None, apply=True, now=NOW)
    found = {o.item.tag: o for o in outcomes}
    assert found["0.9-old"].failure is not None and not found["0.9-old"].deleted
    kept = found[signature]
    assert not kept.deleted and kept.result == "failed: kept: its image could not be deleted"
    assert f"library/driver:{signature}" in fake.manifests
