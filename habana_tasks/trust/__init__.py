"""Trust at the receiving end: cosign signatures and attestations of published images, what
the attestations say (SBOM, provenance) and the policy nodes enforce them with.
May import core, config, registry, engine and verification."""
