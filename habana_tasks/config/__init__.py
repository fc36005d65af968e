"""What the user declared: versions.toml parsed into frozen records (targets, kernels, tags,
image references) and where the project keeps its recipe and cache.
May import core."""
