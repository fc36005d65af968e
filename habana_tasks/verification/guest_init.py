"""The load test's guest /init: the node with the card, KMM's image-extractor and worker, and the
lines the verdict reads (each marked). Every word put into it is checked first: module names may
come from an image's label."""

from __future__ import annotations

import re
from collections.abc import Sequence

from habana_tasks.config import flavours
from habana_tasks.core.errors import CheckError
from habana_tasks.verification.console import MARK

SHELL_WORD = re.compile(r"[A-Za-z0-9_:.-]+")  # a module name or a modalias, as /init takes it

INIT = """#!/bin/sh
# KMM's two steps: the image's own sh, mkdir and cp copy its tree out (as the image's user);
# the worker's modprobe loads the modules from the copy, in order; then report and power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
release="$(uname -r)"
echo "@MARK@ booted $release"
echo "@MARK@ cmdline $(cat /proc/cmdline)"
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "@MARK@ lockdown $(cat /sys/kernel/security/lockdown 2>/dev/null || echo unavailable)"
boot='efi: EFI v\\|secureboot:\\|locked down\\|MokListRT\\|Loaded X.509 cert'
dmesg | sed -n "/$boot/s/^/@MARK@ boot /p"
status=PASS
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /image/tmp && mount --bind /tmp /image/tmp
dir=/tmp/opt
# The node with the card: at boot udev asks the node's kmod for each of the card's devices and
# the node kernel's module claiming it is loaded, before KMM's worker runs.
[ -e /lib/modules ] || ln -s /host/lib/modules /lib/modules
for device in @CARD@; do
  modprobe -b -v "$device" 2>&1 | sed -n "s|^insmod |@MARK@ card $device: udev loaded the node's |p"
done
for m in @MODULES@; do
  [ -d "/sys/module/$m" ] || continue
  echo "@MARK@ node's own $m loaded (taint '$(cat "/sys/module/$m/taint")')"
done
if out="$(chroot --userspec=@USER@ /image /bin/sh -c '@EXTRACT@' 2>&1)" \
    && [ -d "$dir/lib/modules/$release" ]; then
  echo "@MARK@ image-extractor copied /opt/lib/modules/$release"
else
  echo "$out" | sed 's/^/@MARK@ image-extractor: /'
  why="$(echo "$out" | tail -n 1)"
  echo "@MARK@ FAIL the image's own /bin/sh, mkdir and cp (KMM's image-extractor)" \\
    "did not copy its modules out: ${why:-no /opt/lib/modules/$release in the copy}"
  echo "@MARK@ FAIL"
  echo o > /proc/sysrq-trigger
  sleep 10
fi
# KMM's worker: the Module's in-tree modules removed first (modprobe -rv), then ours loaded.
removed=yes
if [ -n "@REMOVE@" ]; then
  out="$(modprobe -rv @REMOVE@ 2>&1)" || removed=""
  echo "$out" | sed -n 's/^./@MARK@ worker: &/p'
  if [ -n "$removed" ]; then echo "@MARK@ worker removed the in-tree @REMOVE@ (modprobe -rv)"; else
    echo "@MARK@ FAIL KMM's worker could not remove the in-tree @REMOVE@ (modprobe -rv):" \
      "$(echo "$out" | tail -n 1)"
    status=FAIL; fi
fi
for m in @MODULES@; do
  [ -n "$removed" ] || break
  missing=""
  deps="$(sed -n "s|^[^:]*/$m\\.ko[^:]*:||p" "$dir/lib/modules/$release/modules.dep" | head -n 1)"
  for file in $deps; do
    if [ ! -e "$dir/lib/modules/$release/$file" ]; then missing="$missing ${file#host/}"; fi
  done
  if [ -n "$missing" ]; then
    echo "@MARK@ FAIL $m needs in-tree$missing, absent from this node's /lib/modules/$release"
    status=FAIL; continue
  fi
  if out="$(modprobe -v -d "$dir" "$m" 2>&1)"; then echo "@MARK@ modprobe $m ok"; else
    echo "$out" | sed 's/^/@MARK@ modprobe: /'
    why="$(echo "$out" | sed -n '/^modprobe: /p' | tail -n 1)"
    echo "@MARK@ FAIL modprobe -d $dir $m failed: ${why:-$(echo "$out" | tail -n 1)}"
    status=FAIL; continue; fi
  echo "$out" | sed 's/^/@MARK@ modprobe: /'
  if [ -d "/sys/module/$m" ]; then echo "@MARK@ loaded $m"; else
    echo "@MARK@ FAIL $m is not in /sys/module"; status=FAIL; continue; fi
  # The kernel's own word on which module holds the name: ours is built outside its tree.
  taint="$(cat "/sys/module/$m/taint")"
  case "$taint" in
    *O*) echo "@MARK@ image's $m loaded: the kernel marks it out-of-tree (taint $taint)" ;;
    *) echo "@MARK@ FAIL the $m loaded is the kernel's own (in-tree, taint '$taint')," \
         "not the image's: it was loaded before KMM's modprobe, which then did nothing"
       status=FAIL; continue ;;
  esac
  magic="$(modinfo -b "$dir" -k "$release" -F vermagic "$m")"
  case "$magic" in
    "$release "*) echo "@MARK@ vermagic $m ok" ;;
    *) echo "@MARK@ FAIL vermagic of $m is '$magic', booted $release"; status=FAIL ;;
  esac
done
if [ -d /sys/bus/pci/drivers/@PCI_DRIVER@ ]; then echo "@MARK@ pci driver @PCI_DRIVER@ registered"
else echo "@MARK@ FAIL pci driver @PCI_DRIVER@ not registered"; status=FAIL; fi
if command -v dmesg >/dev/null; then dmesg | tail -n 40 | sed 's/^/@MARK@ dmesg /'; fi
echo "@MARK@ $status"
echo o > /proc/sysrq-trigger
sleep 10
"""


def init_script(
    modules: Sequence[str],
    release: str,
    firmware: bool = False,
    card: Sequence[str] = (),
    removes: Sequence[str] = (),
) -> bytes:
    """The guest's /init: the node with the card (`card`: its devices' modaliases) and KMM's
    worker, removing `removes` (the Module's inTreeModulesToRemove) before loading `modules`.
    Every word is checked first: the names may come from an image's label."""
    for word in (*modules, *removes, *card):
        if not SHELL_WORD.fullmatch(word):
            raise CheckError(f"refused to load-test: {word!r} is not a module name or modalias")
    return (
        INIT.replace("@MODULES@", " ".join(modules))
        .replace("@CARD@", " ".join(card))
        .replace("@REMOVE@", " ".join(removes))
        .replace("@PCI_DRIVER@", modules[0])
        .replace("@MARK@", MARK)
        .replace("@USER@", flavours.IMAGE_USER)
        .replace("@EXTRACT@", flavours.extractor_script(release, firmware))
        .encode()
    )
