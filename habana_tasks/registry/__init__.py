"""The OCI distribution API: manifests and blobs (digest-verified), tags, deletion, the
credential files and token flow, and single files read from image layers.
May import core and config."""
