"""`invoke verify`'s pair check: the image's labels, its provenance's parameters and its
signatures' annotations must all name the pair asked about."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from habana_tasks.build import labels
from habana_tasks.core.errors import UNKNOWN_STATE, RegistryError, UnverifiedError
from habana_tasks.maintenance.verify import (
    Verified,
    labels_only,
    pair_problems,
    published_for,
    references,
)
from habana_tasks.registry.client import Existence, RemoteImage
from habana_tasks.trust.cosign import signed_pairs
from tests.samples import TARGET

OTHER = replace(TARGET, kernel="6.1.0-99-amd64", tag=f"{TARGET.driver}-6.1.0-99-amd64")


def provenance_of(kernel: str, driver: str, tag: str) -> dict[str, object]:
    return {
        "buildDefinition": {"externalParameters": {"kernel": kernel, "driver": driver, "tag": tag}}
    }


def image_labels(kernel: str, driver: str) -> dict[str, str]:
    return {labels.KERNEL: kernel, labels.DRIVER: driver}


def test_the_pair_asked_about_passes() -> None:
    signed = [{"Bundle": "x"}, labels.pair_identity(TARGET)]
    found = pair_problems(
        TARGET,
        image_labels(TARGET.kernel, TARGET.driver),
        provenance_of(TARGET.kernel, TARGET.driver, TARGET.tag),
        signed,
        sbom_of(TARGET.kernel, TARGET.tag),
    )
    assert found == []


def sbom_of(kernel: str, tag: str) -> dict[str, object]:
    properties = [
        {"name": "io.habana-ai-driver:tag", "value": tag},
        {"name": "io.habana-ai-driver:kernel", "value": kernel},
    ]
    return {"metadata": {"component": {"type": "container", "properties": properties}}}


def test_another_pairs_image_is_named_by_each_witness() -> None:
    found = pair_problems(
        OTHER,
        image_labels(TARGET.kernel, TARGET.driver),
        provenance_of(TARGET.kernel, TARGET.driver, TARGET.tag),
        [labels.pair_identity(TARGET)],
        sbom_of(TARGET.kernel, TARGET.tag),
    )
    asked = f"{OTHER.driver} for {OTHER.kernel} (tag {OTHER.tag})"
    assert found == [
        f"pair: the image is {TARGET.driver} for {TARGET.kernel} (its labels), not {asked}",
        f"pair: the provenance is of {TARGET.driver} for {TARGET.kernel} (tag {TARGET.tag}), "
        f"not {asked}",
        f"pair: the SBOM is of {TARGET.kernel} (tag {TARGET.tag}), not {asked}",
        f"signature: none names {asked} (signed for: {TARGET.driver} for {TARGET.kernel})",
    ]


def test_a_signature_naming_another_tag_does_not_pass_one_naming_none_is_left_to_the_labels() -> (
    None
):
    right = image_labels(TARGET.kernel, TARGET.driver)
    retagged = {**labels.pair_identity(TARGET), labels.TAG: "1.0-elsewhere"}
    (problem,) = pair_problems(TARGET, right, None, [retagged])
    assert problem.startswith("signature: none names") and problem.endswith(
        f"(signed for: {TARGET.driver} for {TARGET.kernel})"
    )
    # Signed before signatures named their pair: the labels and provenance bind it.
    assert pair_problems(TARGET, right, None, [{}]) == []
    assert pair_problems(TARGET, image_labels("x", "y"), None, [{}])[0].startswith("pair: ")
    # Not read (the signature did not verify): nothing said twice.
    assert pair_problems(TARGET, right, None, None) == []
    assert pair_problems(TARGET, {}, None, None)[0].startswith("pair: the image is ? for ?")


def test_cosigns_verified_payloads_give_their_annotations() -> None:
    verified: list[dict[str, Any]] = [
        {"critical": {}, "optional": {labels.KERNEL: "k", "n": 1}},
        {"critical": {}, "optional": None},
        {"critical": {}},
    ]
    assert signed_pairs(verified) == [{labels.KERNEL: "k", "n": "1"}, {}, {}]


def test_the_module_pins_what_verified_and_names_what_did_not() -> None:
    """kmm-module's references: repository@digest of each verified image; an image of another
    pair (unsigned library: its labels) stops it, named; a registry that did not answer is
    exit 4, never a pin."""
    digest = "sha256:" + "a" * 64
    good = RemoteImage(
        TARGET.image, Existence.PRESENT, digest, image_labels(TARGET.kernel, TARGET.driver)
    )
    assert references(labels_only([(TARGET, good)])) == {
        TARGET.tag: f"{TARGET.repository}@{digest}"
    }
    swapped = RemoteImage(OTHER.image, Existence.PRESENT, digest, good.labels)
    with pytest.raises(
        UnverifiedError, match=rf"^{OTHER.image}: pair: the image is .* \(and 1 more"
    ):
        references(labels_only([(TARGET, good), (OTHER, swapped), (OTHER, swapped)]))
    unknown = Verified(TARGET.tag, TARGET.image, unknown="registry.example: 503")
    with pytest.raises(RegistryError, match=r"503$") as raised:
        references([unknown])
    assert raised.value.exit_code == UNKNOWN_STATE


def test_publication_times_order_as_text_and_only_the_pairs_own_count() -> None:
    """A signature's publication time is fixed width (microseconds, UTC): the latest is the
    greatest text; a signature of another pair says nothing of this pair's builds."""
    early = labels.signature_annotations(TARGET, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = labels.signature_annotations(TARGET, datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC))
    assert early[labels.PUBLISHED] == "2026-01-02T03:04:05.000000Z"
    assert published_for(TARGET, [early, late]) == late[labels.PUBLISHED]
    other = labels.signature_annotations(OTHER, datetime(2027, 1, 1, tzinfo=UTC))
    assert published_for(TARGET, [early, other]) == early[labels.PUBLISHED]
    assert published_for(TARGET, [{"legacy": "x"}]) == ""
