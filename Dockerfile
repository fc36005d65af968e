# A precompiled habanalabs driver image for one kernel release, as KMM loads it:
# modules under /opt/lib/modules/<release>/extra, firmware under /opt/lib/firmware, kmod and cp.
# Built by `invoke build`: every ARG below is set by the tool (see habana_tasks/labels.py), and the
# vendor packages arrive through the build context (packages/*.rpm), never downloaded here.
ARG TOOLKIT_IMAGE
ARG BASE_IMAGE

FROM ${TOOLKIT_IMAGE} AS builder
ARG KERNEL_RELEASE
ARG DRIVER_VERSION
ARG DRIVER_GIT_SHA
ARG MODULES
COPY packages/ /tmp/packages/
WORKDIR /tmp/unpacked
# No pipe: podman's OCI format ignores SHELL, so a pipe could not fail the step (no pipefail).
RUN for rpm in /tmp/packages/*.rpm; do \
      rpm2cpio "$rpm" > /tmp/payload.cpio && cpio -idm --quiet < /tmp/payload.cpio || exit 1; \
    done; rm -f /tmp/payload.cpio
WORKDIR /tmp/unpacked/usr/src/habanalabs-${DRIVER_VERSION}
RUN make -j"$(nproc)" KVERSION="${KERNEL_RELEASE}" GIT_SHA="${DRIVER_GIT_SHA}"
# Every module the driver builds (drivers/misc or drivers/accel), debug info stripped, not
# compressed: an xz module made with default settings may not load (CRC64, dictionary size).
RUN set -e; dest="/out/lib/modules/${KERNEL_RELEASE}"; \
    install -d "${dest}/extra" /out/lib/firmware; \
    for module in ${MODULES}; do \
      found="$(find drivers -name "${module}.ko" -print -quit)"; \
      if [ -z "${found}" ]; then echo "${module}.ko was not built" >&2; exit 1; fi; \
      strip --strip-debug -o "${dest}/extra/${module}.ko" "${found}"; \
      echo "extra/${module}.ko" >> "${dest}/modules.order"; \
    done; \
    touch "${dest}/modules.builtin"; \
    if [ -d /tmp/unpacked/lib/firmware ]; then cp -a /tmp/unpacked/lib/firmware/. /out/lib/firmware/; fi

FROM ${BASE_IMAGE}
# kmod for depmod here and modprobe in KMM's worker; cp is required by KMM. No kernel-specific
# ARG is used before this layer, so one base shares it across every kernel.
# hadolint ignore=DL3008,DL3041
RUN set -e; if command -v microdnf >/dev/null; then \
      microdnf install -y --setopt=install_weak_deps=0 kmod && microdnf clean all; \
    elif command -v apt-get >/dev/null; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends kmod \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    else echo "the base image has neither microdnf nor apt-get" >&2; exit 1; fi; \
    command -v depmod && command -v modprobe && command -v cp
ARG KERNEL_RELEASE
COPY --from=builder /out/ /opt/
RUN depmod -b /opt "${KERNEL_RELEASE}" && test -s "/opt/lib/modules/${KERNEL_RELEASE}/modules.dep"
USER 1001
