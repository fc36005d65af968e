# A precompiled habanalabs driver image for one kernel release, as KMM loads it:
# modules under /opt/lib/modules/<release>/extra, firmware under /opt/lib/firmware, kmod and cp,
# and modules.dep resolving in-tree dependencies through /opt/lib/modules/<release>/host.
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
# Every module the package built (drivers/misc, drivers/accel, the NIC modules ...), debug info
# stripped, not compressed: an xz module made with default settings may not load (CRC64,
# dictionary size). A module listed in MODULES that was not built fails here; one built but not
# listed is kept, and the image checks name it.
RUN set -e; dest="/out/lib/modules/${KERNEL_RELEASE}"; \
    install -d "${dest}/extra" /out/lib/firmware; \
    for module in ${MODULES}; do \
      if [ -z "$(find . -name "${module}.ko" -print -quit)" ]; then \
        echo "error: ${module}.ko was not built (it is listed in modules)" >&2; exit 1; fi; \
    done; \
    find . -name '*.ko' > /tmp/found; sort -o /tmp/built /tmp/found; \
    while read -r found; do \
      name="$(basename "${found}")"; \
      if [ -e "${dest}/extra/${name}" ]; then echo "error: two modules named ${name}" >&2; exit 1; fi; \
      strip --strip-debug -o "${dest}/extra/${name}" "${found}"; \
    done < /tmp/built; \
    for module in ${MODULES}; do echo "extra/${module}.ko"; done > "${dest}/modules.order"; \
    for file in modules.builtin modules.builtin.modinfo; do \
      if [ -f "/lib/modules/${KERNEL_RELEASE}/${file}" ]; then \
        cp "/lib/modules/${KERNEL_RELEASE}/${file}" "${dest}/"; fi; \
    done; \
    touch "${dest}/modules.builtin"; \
    if [ -d /tmp/unpacked/lib/firmware ]; then cp -a /tmp/unpacked/lib/firmware/. /out/lib/firmware/; fi
# Signing, when the library signs (MODULE_SIGNING=1): every module, with the target kernel's own
# sign-file and the digest its config names, before depmod. The key is a podman build secret,
# mounted for this step only: it is never in a layer, a label, a build argument or the log.
ARG MODULE_SIGNING
COPY signing/ /tmp/signing/
RUN --mount=type=secret,id=module_signing_key,required=false \
    set -e; if [ "${MODULE_SIGNING}" != 1 ]; then exit 0; fi; \
    key=/run/secrets/module_signing_key; \
    if [ ! -s "${key}" ]; then echo "error: signing is on but the key secret is missing" >&2; exit 1; fi; \
    build="/lib/modules/${KERNEL_RELEASE}/build"; signfile=""; \
    for candidate in "${build}/scripts/sign-file" \
        "/usr/src/kernels/${KERNEL_RELEASE}/scripts/sign-file"; do \
      if [ -x "${candidate}" ]; then signfile="${candidate}"; break; fi; \
    done; \
    if [ -z "${signfile}" ]; then echo "error: the toolkit has no sign-file for ${KERNEL_RELEASE}" >&2; exit 1; fi; \
    hash="$(sed -n '/^CONFIG_MODULE_SIG_HASH=/{s/^CONFIG_MODULE_SIG_HASH="\(.*\)"$/\1/p;q}' \
      "${build}/.config" "/boot/config-${KERNEL_RELEASE}" 2>/dev/null || true)"; \
    for module in "/out/lib/modules/${KERNEL_RELEASE}"/extra/*.ko; do \
      "${signfile}" "${hash:-sha256}" "${key}" /tmp/signing/certificate "${module}"; \
    done; \
    echo "signed with ${hash:-sha256} by $(basename "${signfile}") of ${KERNEL_RELEASE}"
# In-tree dependencies, KMM's way: in KMM's worker pods /host/lib/modules/<release> is the node's
# own module tree, and the image's `host` link points there. Here it points at this toolkit's
# kernel modules (exactly this release), so depmod resolves dependencies through the link and
# modules.dep names in-tree modules as host/kernel/...; none of them is copied into the image.
RUN set -e; dest="/out/lib/modules/${KERNEL_RELEASE}"; \
    ln -s "/host/lib/modules/${KERNEL_RELEASE}" "${dest}/host"; \
    mkdir -p /host/lib/modules; \
    ln -sfn "/lib/modules/${KERNEL_RELEASE}" "/host/lib/modules/${KERNEL_RELEASE}"; \
    depmod -b /out "${KERNEL_RELEASE}"; \
    test -s "${dest}/modules.dep"

FROM ${BASE_IMAGE}
# kmod: modprobe for KMM's worker and the checks; cp is required by KMM. No kernel-specific
# ARG is used before this layer, so one base shares it across every kernel.
# hadolint ignore=DL3008,DL3041
RUN set -e; if command -v microdnf >/dev/null; then \
      microdnf install -y --setopt=install_weak_deps=0 kmod && microdnf clean all; \
    elif command -v apt-get >/dev/null; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends kmod \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    else echo "error: the base image has neither microdnf nor apt-get" >&2; exit 1; fi; \
    command -v depmod && command -v modprobe && command -v cp
COPY --from=builder /out/ /opt/
USER 1001
