"""A build run: vendor packages, resolved inputs, labels and fingerprint, the pure plan, the
pipeline that executes it, the reporter it speaks to, and the service the commands call.
May import core, config, registry, engine, verification and trust."""
