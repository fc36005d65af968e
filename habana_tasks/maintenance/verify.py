"""`invoke verify`: what a node's policy checks, checked by cosign itself (the signature and
both attestations, with the library's public key), then whether the attestations tell the
truth: the SBOM's files are the image's, the provenance's inputs are the image's own, and the
image, its provenance and its signature all name the pair asked about (a tag moved onto another
pair's signed image is refused)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from habana_tasks.build import labels
from habana_tasks.config.image_reference import ImageReference
from habana_tasks.config.targets import BuildTarget, Config
from habana_tasks.core.errors import (
    OK,
    TARGET_FAILED,
    UNKNOWN_STATE,
    CommandError,
    HabanaError,
    RegistryError,
    UnverifiedError,
    UsageError,
)
from habana_tasks.engine.podman import Podman
from habana_tasks.registry.client import Existence, RegistryClient, RemoteImage
from habana_tasks.trust import attachments, cosign, sbom, signature_check
from habana_tasks.trust.cosign import Cosign

# Provenance dependency name -> the label holding the same input's digest (sha256 hex or
# sha256:hex) in the image itself.
DEPENDENCY_LABELS = {
    "toolkit image": labels.INPUT_LABELS["toolkit image digest"],
    "base image": labels.INPUT_LABELS["base image digest"],
    "driver package": labels.INPUT_LABELS["driver package"],
    "firmware package": labels.INPUT_LABELS["firmware package"],
    "Dockerfile": labels.INPUT_LABELS["Dockerfile"],
}
WHAT = {cosign.SBOM: "SBOM", cosign.PROVENANCE: "provenance"}


@dataclass(frozen=True)
class Verified:
    """One image's verification: what verified, what did not (named), or why nothing could be
    decided (the registry did not answer)."""

    tag: str
    image: str
    digest: str | None = None
    signed: bool = False
    sbom: bool = False
    provenance: bool = False
    problems: tuple[str, ...] = ()
    unknown: str | None = None
    published: str = ""  # when its verified signature naming the pair was made ("" unsaid)

    @property
    def ok(self) -> bool:
        return self.unknown is None and not self.problems


def said(exc: CommandError) -> str:
    """cosign's own reason: its last line that says something."""
    lines = [line.strip() for line in exc.tail if line.strip()]
    reason = next((line for line in reversed(lines) if line.startswith("Error:")), None)
    return (reason or (lines[-1] if lines else str(exc))).removeprefix("Error: ")


def statement_of(verified: list[dict[str, Any]], digest: str) -> dict[str, Any]:
    """The in-toto statement about this digest among what cosign verified."""
    for envelope in verified:
        found = json.loads(base64.b64decode(envelope.get("payload", "")))
        subjects = found.get("subject") or []
        if any(s.get("digest", {}).get("sha256") == digest.split(":", 1)[1] for s in subjects):
            return dict(found)
    raise HabanaError(f"no attestation names {digest} as its subject")


def provenance_problems(predicate: Mapping[str, Any], image_labels: Mapping[str, str]) -> list[str]:
    """Each resolved dependency whose digest is not the one the image's own labels record."""
    resolved = predicate.get("buildDefinition", {}).get("resolvedDependencies", [])
    problems = []
    for prefix, label in DEPENDENCY_LABELS.items():
        recorded = image_labels.get(label, "").split(":", 1)[-1]
        claimed = [
            d.get("digest", {}).get("sha256", "")
            for d in resolved
            if str(d.get("name", "")).startswith(prefix)
        ]
        if not recorded and not claimed:
            continue
        if claimed != [recorded]:
            problems.append(
                f"provenance: {prefix} {', '.join(claimed) or 'missing'}, "
                f"the image's label says {recorded or 'none'}"
            )
    return problems


def pair_problems(
    target: BuildTarget,
    image_labels: Mapping[str, str],
    provenance: Mapping[str, Any] | None,
    signed_for: list[dict[str, str]] | None,
    bill: Mapping[str, Any] | None = None,
) -> list[str]:
    """What names another pair than the one asked about: the image's own labels (its config,
    which its digest covers), the provenance's parameters, the SBOM's image (`bill`), and the
    signatures' annotations (None: not read, as when the signature did not verify). A tag moved
    onto another pair's signed image fails here, naming both."""
    asked = labels.pair_identity(target)
    said = f"{target.driver} for {target.kernel} (tag {target.tag})"
    problems = []
    named = (image_labels.get(labels.DRIVER, "?"), image_labels.get(labels.KERNEL, "?"))
    if named != (target.driver, target.kernel):
        problems.append(f"pair: the image is {named[0]} for {named[1]} (its labels), not {said}")
    if provenance is not None:
        params = provenance.get("buildDefinition", {}).get("externalParameters", {})
        claimed = (params.get("driver"), params.get("kernel"), params.get("tag"))
        if claimed != (target.driver, target.kernel, target.tag):
            problems.append(
                f"pair: the provenance is of {claimed[0]} for {claimed[1]} (tag {claimed[2]}), "
                f"not {said}"
            )
    if bill is not None:
        image = (bill.get("metadata") or {}).get("component") or {}
        props = {
            str(p.get("name", "")).removeprefix(sbom.PROPERTY): str(p.get("value", ""))
            for p in image.get("properties") or []
        }
        if (props.get("kernel"), props.get("tag")) != (target.kernel, target.tag):
            problems.append(
                f"pair: the SBOM is of {props.get('kernel')} (tag {props.get('tag')}), not {said}"
            )
    # A signature from before signatures named their pair names none: its image is bound by its
    # labels and provenance above. One naming pairs must name this one.
    naming = [found for found in signed_for or () if any(k in found for k in asked)]
    if naming and not signature_check.names_pair(naming, asked):
        seen = sorted({f"{f.get(labels.DRIVER)} for {f.get(labels.KERNEL)}" for f in naming})
        problems.append(f"signature: none names {said} (signed for: {', '.join(seen)})")
    return problems


def sbom_problems(predicate: Mapping[str, Any], files: tuple[sbom.ImageFile, ...]) -> list[str]:
    """Files of the image the SBOM omits or hashes otherwise, and files it lists that the image
    lacks."""
    problems = [f"SBOM: {p}" for p in sbom.accounted_for(predicate, files)]
    present = {f.path for f in files}
    listed = [c["name"] for c in predicate.get("components", []) if c.get("type") == "file"]
    problems += [f"SBOM: {name}: not in the image" for name in listed if name not in present]
    return problems


def verify_image(
    tool: Cosign,
    public_key: Path,
    registry: RegistryClient,
    podman: Podman,
    target: BuildTarget,
    reference: str,
    insecure: frozenset[str],
    work: Path,
) -> Verified:
    remote = registry.inspect(reference)
    if remote.existence is Existence.UNKNOWN:
        return Verified(target.tag, reference, unknown=remote.error)
    if remote.existence is Existence.ABSENT or remote.digest is None:
        return Verified(target.tag, reference, problems=("not in the library",))
    digest = remote.digest
    by_digest = f"{ImageReference.parse(reference).name}@{digest}"
    problems: list[str] = []
    signed = True
    signed_for: list[dict[str, str]] | None = None
    try:
        signed_for = cosign.signed_pairs(cosign.verify(tool, public_key, by_digest, insecure))
    except CommandError as exc:
        signed = False
        problems.append(f"signature: {said(exc)}")
    statements: dict[str, dict[str, Any]] = {}
    for kind in (cosign.SBOM, cosign.PROVENANCE):
        try:
            verified = cosign.verify_attestation(tool, public_key, by_digest, kind, insecure)
            statements[kind] = statement_of(verified, digest)
        except CommandError as exc:
            problems.append(f"{WHAT[kind]} attestation: {said(exc)}")
        except (HabanaError, ValueError) as exc:
            problems.append(f"{WHAT[kind]} attestation: {exc}")
    if cosign.SBOM in statements:
        work.mkdir(parents=True, exist_ok=True)
        rootfs = work / "rootfs.tar"
        podman.pull(by_digest, ImageReference.parse(reference).registry not in insecure)
        podman.export_rootfs(by_digest, rootfs)
        problems += sbom_problems(
            statements[cosign.SBOM].get("predicate", {}), sbom.image_files(rootfs)
        )
    provenance = statements.get(cosign.PROVENANCE, {}).get("predicate")
    if provenance is not None:
        problems += provenance_problems(provenance, remote.labels)
    bill = statements.get(cosign.SBOM, {}).get("predicate")
    problems += pair_problems(target, remote.labels, provenance, signed_for, bill)
    return Verified(
        target.tag,
        reference,
        digest,
        signed,
        cosign.SBOM in statements,
        cosign.PROVENANCE in statements,
        tuple(problems),
        published=published_for(target, signed_for or []),
    )


def published_for(target: BuildTarget, signed: Sequence[Mapping[str, str]]) -> str:
    """When the newest of these signatures naming the pair was made ("" when none says)."""
    asked = labels.pair_identity(target)
    naming = (f for f in signed if signature_check.names_pair([f], asked))
    return max((f.get(labels.PUBLISHED, "") for f in naming), default="")


def newer_build(
    tool: Cosign,
    public_key: Path,
    target: BuildTarget,
    verified: Verified,
    leads: Sequence[attachments.SignedFor],
    insecure: frozenset[str],
) -> str | None:
    """A later signed build of the same pair than the one the tag names, as the repository's
    signatures say and cosign confirms (a lead that does not verify is ignored); None if none."""
    name = ImageReference.parse(verified.image).name
    later = sorted(
        {
            (found, lead.digest)
            for lead in leads
            if lead.digest != verified.digest
            and (found := published_for(target, [lead.annotations])) > verified.published
        },
        reverse=True,
    )
    for _, digest in later:
        try:
            checked = cosign.signed_pairs(
                cosign.verify(tool, public_key, f"{name}@{digest}", insecure)
            )
        except CommandError:
            continue
        when = published_for(target, checked)
        if when > verified.published:
            this = verified.published or "before signatures were dated"
            return (
                f"not the newest: {name}@{digest} is a later signed build of this pair "
                f"(published {when}; this one {this})"
            )
    return None


@dataclass(frozen=True)
class Verifier:
    """What verifies a library's published images: cosign with the public key [cosign] names,
    the registry, and podman (the SBOM is checked against the image's own files)."""

    tool: Cosign
    public_key: Path
    registry: RegistryClient
    podman: Podman
    insecure: frozenset[str]
    work: Path

    def verify(
        self, targets: Sequence[BuildTarget], image: str | None = None
    ) -> tuple[Verified, ...]:
        """Each target's published image (or `image`, for one target), verified in turn, then
        checked to be the newest build of its pair the repository holds signed."""
        leads: dict[str, list[attachments.SignedFor]] = {}
        results = []
        for target in targets:
            reference = image or target.image
            found = verify_image(
                self.tool, self.public_key, self.registry, self.podman, target,
                reference, self.insecure, self.work / target.tag,
            )  # fmt: skip
            if found.ok and found.digest is not None:  # else refused already, and why
                name = ImageReference.parse(reference).name
                try:
                    if name not in leads:
                        leads[name] = attachments.signatures(self.registry, name)
                    newer = newer_build(
                        self.tool, self.public_key, target, found, leads[name], self.insecure
                    )
                except RegistryError as exc:
                    found = replace(found, unknown=f"the repository's signatures: {exc}")
                else:
                    found = replace(
                        found, problems=(*found.problems, newer) if newer else found.problems
                    )
            results.append(found)
        return tuple(results)


def verifier(
    config: Config, registry: RegistryClient, podman: Podman, project_root: Path, work: Path
) -> Verifier:
    """The library's verifier, checked before any image is: [cosign] and its public key, and a
    cosign that can verify (else a one-line error, exit 2)."""
    public = public_key_of(config)
    cosign.public_key(public)
    tool = cosign.find(podman.runner, project_root)
    return Verifier(tool, public, registry, podman, config.insecure_registries, work)


def public_key_of(config: Config) -> Path:
    """The public key [cosign] names; none configured is a one-line error (exit 2)."""
    if config.image_signing is None:
        raise UsageError(
            f"{config.path} has no [cosign]: expected the public key its images are signed with"
        )
    return config.image_signing.public_key


def pinner(
    config: Config,
    registry: RegistryClient,
    podman: Callable[[], Podman],
    project_root: Path,
    work: Path,
) -> Callable[[Sequence[tuple[BuildTarget, RemoteImage]]], dict[str, str]]:
    """What pins a Module's images: each verified (a library that signs nothing: its labels
    checked), then named by the digest that verified."""

    def pin(held: Sequence[tuple[BuildTarget, RemoteImage]]) -> dict[str, str]:
        if config.image_signing is None:
            return references(labels_only(held))
        checker = verifier(config, registry, podman(), project_root, work)
        return references(checker.verify([t for t, _ in held]))

    return pin


def labels_only(held: Sequence[tuple[BuildTarget, RemoteImage]]) -> tuple[Verified, ...]:
    """A library that signs nothing: each image as the registry described it, checked to be
    the pair its tag names (its labels, which its digest covers)."""
    return tuple(
        Verified(t.tag, t.image, r.digest, problems=tuple(pair_problems(t, r.labels, None, None)))
        for t, r in held
    )


def references(results: Sequence[Verified]) -> dict[str, str]:
    """Per tag, repository@digest of what verified; nothing when any image did not (it is named,
    with how many others failed)."""
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more image(s); `invoke verify` lists them)"
        why = first.problems[0] if first.problems else first.unknown
        error = RegistryError if not first.problems else UnverifiedError
        raise error(f"{first.image}: {why}{more if len(failed) > 1 else ''}")
    return {r.tag: f"{ImageReference.parse(r.image).name}@{r.digest}" for r in results}


def exit_code(results: tuple[Verified, ...]) -> int:
    """3 when anything does not verify (named), else 4 when the registry could not answer."""
    if any(r.problems for r in results):
        return TARGET_FAILED
    if any(r.unknown for r in results):
        return UNKNOWN_STATE
    return OK


def to_json(results: tuple[Verified, ...]) -> str:
    return json.dumps([asdict(r) | {"ok": r.ok} for r in results], indent=2)
