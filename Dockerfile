# A precompiled habanalabs driver image for one kernel release, as KMM loads it: modules under
# /opt/lib/modules/<release>/extra, firmware under /opt/lib/firmware, modules.dep resolving
# in-tree dependencies through /opt/lib/modules/<release>/host, and the few tools the image's
# flavour needs (see README, "Image flavours"), copied with their libraries from the toolkit.
# Built by `invoke build` with --network none: every ARG below is set by the tool (see
# habana_tasks/build/labels.py), the vendor packages arrive through the build context
# (packages/*.rpm), and no step installs or downloads anything. Three builds of this file make
# an image: `--target compile-inputs` (the compile's key, once per toolkit), `--target compiled`
# (only when the compile cache has no entry for that key) and the last stage, which assembles the
# image from the compiled files and the flavour's tools.
ARG TOOLKIT_IMAGE
# No base: the image holds nothing but the driver and its tools. A configured [base] image must
# already hold the flavour's tools; nothing is installed into it.
ARG BASE_IMAGE=scratch

# The flavour's tools (IMAGE_TOOLS), each with the shared libraries it loads, laid out as the
# toolkit lays them out (bin, sbin, lib, lib64 linked into usr). First in the file, so that
# `--target tools` builds this stage alone (the load test's worker tools come from here too).
FROM ${TOOLKIT_IMAGE} AS tools
ARG IMAGE_TOOLS
# Each file copied in is printed with the toolkit package it came from (TOOL-FILE lines: the
# SBOM's). The pipes only trim a query's extra lines; a failed query prints "- -".
# hadolint ignore=DL4006
RUN set -e; root=/rootfs; mkdir -p "${root}"; \
    owner() { \
      real="$(readlink -f "$1")"; \
      if command -v rpm > /dev/null 2>&1 && rpm -qf "${real}" > /dev/null 2>&1; then \
        rpm -qf --qf '%{NAME} %{VERSION}-%{RELEASE}\n' "${real}" | head -n 1; return; fi; \
      if command -v dpkg-query > /dev/null 2>&1; then \
        for candidate in "${real}" "${real#/usr}"; do \
          package="$(dpkg-query -S "${candidate}" 2> /dev/null | head -n 1 | cut -d: -f1)"; \
          if [ -n "${package}" ]; then \
            echo "${package} $(dpkg-query -W -f='${Version}' "${package}" 2> /dev/null | head -n 1)"; \
            return; fi; \
        done; fi; \
      echo "- -"; \
    }; \
    if [ -z "${IMAGE_TOOLS}" ]; then tar -C "${root}" -cf /rootfs.tar .; exit 0; fi; \
    mkdir -p "${root}/usr/bin" "${root}/usr/sbin" "${root}/usr/lib" "${root}/usr/lib64"; \
    for dir in bin sbin lib lib64; do ln -s "usr/${dir}" "${root}/${dir}"; done; \
    for tool in ${IMAGE_TOOLS}; do \
      path="$(command -v "${tool}" || true)"; \
      case "${path}" in /*) ;; *) \
        echo "error: the toolkit image has no ${tool} to copy into the image" >&2; exit 1 ;; esac; \
      cp -L "${path}" "${root}/usr/bin/${tool}"; \
      echo "TOOL-FILE /usr/bin/${tool} $(owner "${path}")"; \
      if ! ldd "${path}" > /tmp/ldd 2>&1; then \
        if grep -q "not a dynamic executable" /tmp/ldd; then : > /tmp/ldd; \
        else echo "error: ldd ${path}: $(cat /tmp/ldd)" >&2; exit 1; fi; fi; \
      if grep -q "not found" /tmp/ldd; then \
        echo "error: ${tool} (${path}) needs a library the toolkit lacks: $(cat /tmp/ldd)" >&2; exit 1; fi; \
      sed -n 's|.*=> \(/[^ ]*\) (.*|\1|p; s|^[[:space:]]*\(/[^ ]*\) (.*|\1|p' /tmp/ldd > /tmp/libs; \
      while read -r lib; do \
        mkdir -p "${root}$(dirname "${lib}")"; \
        if [ ! -e "${root}${lib}" ]; then \
          cp -L "${lib}" "${root}${lib}"; copied="$(readlink -f "${root}${lib}")"; \
          echo "TOOL-FILE ${copied#"${root}"} $(owner "${lib}")"; fi; \
      done < /tmp/libs; \
    done; \
    rm -f /tmp/ldd /tmp/libs; tar -C "${root}" -cf /rootfs.tar .

# What the compile reads from the toolkit, as one digest the build prints: every file the kernel's
# build tree (/lib/modules/<release>/build) leads to, and the toolchain (gcc, cc1, as, ld, make:
# their binaries and gcc's version). The compile cache's key holds it: a toolkit rebuilt with the
# same kernel and compiler compiles nothing again (see habana_tasks/build/compile.py).
FROM ${TOOLKIT_IMAGE} AS compile-inputs
ARG KERNEL_RELEASE
RUN set -e; build="/lib/modules/${KERNEL_RELEASE}/build"; \
    if [ ! -d "${build}/" ]; then echo "error: the toolkit has no ${build}" >&2; exit 1; fi; \
    find -L "${build}/" -type f -print0 > /tmp/files; sort -z -o /tmp/files /tmp/files; \
    xargs -0r sha256sum < /tmp/files > /tmp/inputs; count="$(wc -l < /tmp/inputs)"; \
    for tool in gcc as ld make; do \
      path="$(command -v "${tool}" || true)"; \
      case "${path}" in /*) ;; *) echo "error: the toolkit has no ${tool}" >&2; exit 1 ;; esac; \
      sha256sum "$(readlink -f "${path}")" >> /tmp/inputs; \
    done; \
    sha256sum "$(gcc -print-prog-name=cc1)" >> /tmp/inputs; gcc --version > /tmp/version; \
    head -n 1 /tmp/version >> /tmp/inputs; sha256sum /tmp/inputs > /tmp/digest; \
    echo "COMPILE-INPUTS $(cut -c1-64 /tmp/digest) ${count} files"

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

# What the compile made, alone: the compile cache keeps these files, and every image is assembled
# from them (compiled/ in the build context), whether compiled now or before.
FROM scratch AS compiled
COPY --from=builder /out/ /compiled/

FROM ${BASE_IMAGE}
# Nothing runs in this stage: it only receives files, so any base (or none) serves every kernel.
COPY --from=tools /rootfs/ /
COPY compiled/ /opt/
USER 1001
