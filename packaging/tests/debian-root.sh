#!/usr/bin/env bash
# Prints the path of a cached, pristine Debian 12 root filesystem tarball, debootstrapping it
# from Debian's archive on first use. Tests unpack it into a fresh directory every run, so the
# cache is never modified by a test. Cache: $KVM_PACKAGING_CACHE or ~/.cache/kvmmanager-packaging.
set -euo pipefail
cache=${KVM_PACKAGING_CACHE:-${HOME:-/root}/.cache/kvmmanager-packaging}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd-sysv + udev: the root must boot with systemd as init (VM test) and have udev rules
# applied; kmod lets udev load virtio_console; the rest is what a minimal guest has.
include=systemd-sysv,udev,kmod,init-system-helpers,iproute2,procps
tarball="$cache/debian12-systemd.tar"
mkdir -p "$cache"
# One builder at a time (parallel ctest runs would otherwise debootstrap twice).
exec 9>"$cache/.lock"
flock 9
if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { echo "debian-root: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  work=$(mktemp -d "$cache/bootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "debian-root: debootstrapping Debian 12 into $work (first run only, a few minutes)" >&2
  if ! debootstrap --variant=minbase --include="$include" bookworm "$work/root" "$mirror" \
      >"$work/log" 2>&1; then
    tail -20 "$work/log" >&2
    exit 1
  fi
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages
  tar -C "$work/root" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
echo "$tarball"
