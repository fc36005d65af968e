"""Looking after a published library: status, OpenShift kernel discovery, KMM Modules,
retention (prune) and upgrade preflight.
May import core, config, registry, engine, verification, trust and build."""
