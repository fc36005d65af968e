"""The container engine: podman command lines (pure) and the operations that run them, and
which build isolation this host supports.
May import core and config."""
