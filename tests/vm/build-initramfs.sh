#!/usr/bin/env bash
# Builds the test VM: a Debian cloud kernel plus an initramfs holding busybox, the agent, its config and
# an /init that starts the agent the way the systemd unit does. Installs its host tools with apt-get.
#
#   build-initramfs.sh --agent PATH --out DIR [--cache DIR] [--qemu-ga PATH]
#
# --qemu-ga adds that qemu-ga binary with its shared libraries, started by init on the port named
# org.qemu.guest_agent.0 (bench/vm_bench.sh compares the two agents in one VM).
# Writes DIR/vmlinuz, DIR/initramfs.cpio.gz and DIR/kernel-release. Downloads are cached in --cache
# (default $KVMM_VM_CACHE, else ~/.cache/kvmmanager-vm) so later runs need no network.
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }
log() { echo "build-initramfs: $*" >&2; }

agent="" out="" qga="" cache="${KVMM_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmmanager-vm}"
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    --qemu-ga) qga="$2"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -n "$agent" ] && [ -n "$out" ] || die "usage: $0 --agent PATH --out DIR [--cache DIR] [--qemu-ga PATH]"
[ -z "$qga" ] || [ -x "$qga" ] || die "qemu-ga binary not found or not executable: $qga"
[ -x "$agent" ] || die "agent binary not found or not executable: $agent"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$out" "$cache"

# Host tools. apt-get only when something is missing, so a warm machine needs no network.
need=()
for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio depmod:kmod \
  socat:socat; do
  cmd="${pair%%:*}" pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# busybox-static specifically: the dynamic busybox package would not run in the initramfs.
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq || log "apt-get update failed; trying the install anyway"
  timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
    || die "apt-get install ${need[*]} failed"
fi

# Kernel: resolve the cloud metapackage to the versioned image package, download and unpack it once.
meta=linux-image-cloud-amd64
kpkg="$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
if [ -z "$kpkg" ]; then
  # An empty apt list (fresh machine): refresh once, then ask again.
  timeout 600 apt-get update -qq || true
  kpkg="$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
fi
if [ -z "$kpkg" ]; then
  # No apt metadata at all: fall back to whatever an earlier run cached.
  kpkg="$(ls -1 "$cache" 2>/dev/null | sed -n 's/^\(linux-image-.*-cloud-amd64\)\.root$/\1/p' | tail -n1)"
  [ -n "$kpkg" ] || die "cannot resolve $meta (apt-cache depends) and nothing is cached in $cache"
  log "apt cannot resolve $meta; using cached $kpkg"
fi
kroot="$cache/$kpkg.root"
if [ ! -f "$kroot/.complete" ]; then
  log "downloading $kpkg"
  rm -rf "$kroot" "$cache/dl"
  mkdir -p "$cache/dl"
  # apt's sandbox user cannot write to root-owned dirs; the warning about that is harmless.
  (cd "$cache/dl" && timeout 600 apt-get download -q "$kpkg" 2>&1 | grep -v unsandboxed >&2) || true
  deb="$(ls "$cache"/dl/"$kpkg"_*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || die "apt-get download $kpkg produced no .deb"
  dpkg-deb -x "$deb" "$kroot.tmp"
  rm -rf "$cache/dl"
  mv "$kroot.tmp" "$kroot"
  touch "$kroot/.complete"
fi
krel="$(ls -1 "$kroot/lib/modules" | head -n1)"
[ -f "$kroot/boot/vmlinuz-$krel" ] || die "no kernel image in $kroot/boot"
# The .deb ships no modules.dep (postinst makes it); build it so modprobe can order the modules.
[ -f "$kroot/lib/modules/$krel/modules.dep" ] || depmod -b "$kroot" "$krel"

# Staging tree for the initramfs.
stage="$out/initramfs.d"
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/local/sbin,etc/kvmmanager-agent} \
  "$stage"/{proc,sys,dev,run,tmp,var/log,data,root,lib/modules/"$krel"}

# busybox-static installs a static /bin/busybox (the dynamic busybox package conflicts with it).
cp /bin/busybox "$stage/bin/busybox"
# Applet links at their usual paths (busybox knows them), made now so /init need not.
"$stage/bin/busybox" --list-full | while read -r applet; do
  [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done

# copy_libs BINARY: its shared libraries (and the loader) at the same paths in the initramfs.
copy_libs() {
  ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
}

# The agent at the path the seed's unit runs it from. A dynamic binary brings its libraries along, but
# the project ships it static; say so loudly if it is not.
install -m 0755 "$agent" "$stage/usr/local/bin/kvmmanager-agent"
if readelf -l "$agent" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  log "WARNING: $agent is not statically linked; copying its shared libraries into the initramfs"
  copy_libs "$agent"
fi

if [ -n "$qga" ]; then
  install -m 0755 "$qga" "$stage/usr/sbin/qemu-ga"
  copy_libs "$qga"
  cp "$here/guest/qemu-ga-service" "$stage/usr/local/sbin/qemu-ga-service"
  chmod 0755 "$stage/usr/local/sbin/qemu-ga-service"
fi

# virtio modules in dependency order: the PCI transport, the console (the port), net and block.
: >"$stage/etc/kvmm-modules"
for mod in virtio_pci virtio_console virtio_net virtio_blk; do
  modprobe -d "$kroot" -S "$krel" --show-depends "$mod" | awk '$1 == "insmod" {print $2}' |
    while read -r ko; do
      rel="${ko#"$kroot"/lib/modules/"$krel"/}"
      grep -qxF "$rel" "$stage/etc/kvmm-modules" && continue
      mkdir -p "$stage/lib/modules/$krel/$(dirname "$rel")"
      cp "$ko" "$stage/lib/modules/$krel/$rel"
      echo "$rel" >>"$stage/etc/kvmm-modules"
    done
done
grep -q virtio_console "$stage/etc/kvmm-modules" || die "virtio_console module not found in $kpkg"

cp "$here/guest/init" "$stage/init"
cp "$here/guest/hotplug" "$stage/sbin/hotplug"
cp "$here/guest/kvmm-agent-service" "$stage/usr/local/sbin/kvmm-agent-service"
cp "$here/guest/inittab" "$stage/etc/inittab"
# qemu-ga as a second respawned service.
[ -z "$qga" ] || sed -i '1a ::respawn:/usr/local/sbin/qemu-ga-service' "$stage/etc/inittab"
cp "$here/guest/config.json" "$stage/etc/kvmmanager-agent/config.json"
chmod 0755 "$stage/init" "$stage/sbin/hotplug" "$stage/usr/local/sbin/kvmm-agent-service"
echo kvmm-testvm >"$stage/etc/hostname"
cat >"$stage/etc/os-release" <<'EOF'
PRETTY_NAME="kvmmanager test VM (initramfs)"
NAME="kvmmanager-testvm"
ID=kvmmtestos
VERSION_ID="1"
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"
echo "$krel" >"$stage/etc/kvmm-kernel-release"

(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp "$kroot/boot/vmlinuz-$krel" "$out/vmlinuz"
echo "$krel" >"$out/kernel-release"
rm -rf "$stage"
log "kernel $krel, initramfs $(du -k "$out/initramfs.cpio.gz" | cut -f1) KiB in $out"
