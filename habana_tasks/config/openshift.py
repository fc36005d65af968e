"""OpenShift's version grammars, one copy each: a minor (4.14) as the versions file's
discover.minors and `--minor` take it; a release (4.16.12, 4.17.0-rc.1) as `--openshift` does."""

from __future__ import annotations

import re

OPENSHIFT_MINOR_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\Z")
MINOR_EXPECTED = "an OpenShift minor like 4.14"
OPENSHIFT_RELEASE_RE = re.compile(
    r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,4}(-(ec|fc|rc)\.[0-9]{1,3})?\Z"
)
RELEASE_EXPECTED = "an OpenShift release like 4.16.12 (or 4.17.0-rc.1)"
