#!/usr/bin/env bash
# Proof: a Debian 12 root with the agent .deb installed boots in QEMU (TCG) with systemd as init;
# udev sees the org.kvmmanager.agent.0 port, systemd starts kvmmanager-agent.service (nobody
# starts it by hand) and the host gets an answer to ping through the channel. Hot-unplugging the
# port stops the service (BindsTo=), plugging it back starts it again.
# Kernel: Debian's linux-image-cloud-amd64 (apt-get download, cached); a 20-line busybox
# initramfs loads virtio_blk and switches to the ext4 root image (mkfs.ext4 -d).
source "$(dirname "$0")/lib.sh"
require_root
require_tools qemu-system-x86_64 mkfs.ext4 busybox cpio socat apt-get dpkg-deb depmod modprobe
# Measured: systemd started the agent ~216 s after QEMU started (TCG, 2 cores shared by ~8 builds).
boot_timeout=${KVM_VM_BOOT_TIMEOUT:-600}
cache=${KVM_PACKAGING_CACHE:-${HOME:-/root}/.cache/kvmmanager-packaging}

# --- kernel (cached) --------------------------------------------------------------------------
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
[[ -n $kpkg ]] || { echo "FAIL: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
kroot="$cache/$kpkg"
if [[ ! -d $kroot ]]; then
  (
    exec 9>"$cache/.kernel-lock"
    flock 9
    [[ -d $kroot ]] && exit 0
    tmp=$(mktemp -d "$cache/kernel.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null)
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    mv "$tmp/root" "$kroot"
    rm -rf "$tmp"
  )
fi
kver=${kpkg#linux-image-}
# The .deb has no modules.dep (its postinst would run depmod).
[[ -f $kroot/lib/modules/$kver/modules.dep ]] || depmod -b "$kroot" "$kver"
vmlinuz="$kroot/boot/vmlinuz-$kver"

work=$(mktemp -d /var/tmp/kvm-pkg-vm.XXXXXX)
root=""
qemu_pid=""
cleanup() {
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qemu_pid" 2>/dev/null || true
  fi
  [[ -n $root ]] && remove_root "$root"
  rm -rf "$work"
}
trap cleanup EXIT

# --- root filesystem: fresh Debian 12 + the agent .deb + the kernel's modules ----------------
root=$(fresh_root)
cp "$agent_deb" "$root/tmp/agent.deb"
chroot "$root" dpkg -i /tmp/agent.deb >/dev/null
rm "$root/tmp/agent.deb"
profile=${KVM_VM_PROFILE:-default}
if [[ $profile == strict ]]; then
  mkdir -p "$root/etc/systemd/system/kvmmanager-agent.service.d"
  cp "$root/usr/share/doc/kvmmanager-agent/examples/hardening-strict.conf" \
    "$root/etc/systemd/system/kvmmanager-agent.service.d/"
fi
# Test-only reporter: once the agent is active, print how systemd sees it on the console.
cat > "$root/etc/systemd/system/kvm-report.service" <<'UNIT'
[Unit]
Description=report kvmmanager-agent state to the console
[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'for i in $(seq 120); do systemctl is-active -q kvmmanager-agent && break; sleep 1; done; systemctl show -p ActiveState -p SubState -p Type -p ProtectSystem -p NoNewPrivileges kvmmanager-agent.service | sed "s/^/kvm-report: /"'
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s /etc/systemd/system/kvm-report.service "$root/etc/systemd/system/multi-user.target.wants/"
mkdir -p "$root/lib/modules"
cp -a "$kroot/lib/modules/$kver" "$root/lib/modules/"
depmod -b "$root" "$kver"
echo kvm-pkg-test > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
mkfs.ext4 -q -F -L root -d "$root" "$work/root.img" 1536M
remove_root "$root"
root=""

# --- initramfs: load virtio_blk, mount /dev/vda, hand over to systemd -------------------------
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,mod}
cp "$(command -v busybox)" "$ird/bin/busybox"
modules=$(for m in virtio_pci virtio_blk; do modprobe -d "$kroot" -S "$kver" --show-depends "$m"; done |
          awk '$1 == "insmod" && !seen[$2]++ {print $2}')
[[ -n $modules ]] || { echo "FAIL: no virtio modules found in $kroot" >&2; exit 1; }
for m in $modules; do cp "$m" "$ird/mod/"; echo "$(basename "$m")"; done > "$ird/mod/order"
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mod/order); do insmod /mod/$m; done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# --- boot ---------------------------------------------------------------------------------------
chan="$work/agent.sock"
mon="$work/monitor.sock"
console="$work/console.log"
port_dev="virtserialport,bus=vser.0,chardev=agent,name=org.kvmmanager.agent.0,id=agentport"
accel=tcg
# -nodefaults: no CD-ROM, NIC or VGA whose drivers udev would load (slow under TCG).
# timeout: QEMU ends on its own even if this script is killed before its EXIT trap runs.
timeout -k 10 $((boot_timeout + 300)) qemu-system-x86_64 -accel "$accel" -m 512 -smp 1 -nodefaults -display none -no-reboot \
  -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 root=/dev/vda rw panic=-1 modprobe.blacklist=kvm,kvm_amd,kvm_intel systemd.show_status=1 systemd.firstboot=off systemd.journald.forward_to_console=1" \
  -drive "file=$work/root.img,format=raw,if=virtio" \
  -device virtio-serial-pci,id=vser \
  -chardev "socket,id=agent,path=$chan,server=on,wait=off" -device "$port_dev" \
  -monitor "unix:$mon,server=on,wait=off" -serial "file:$console" &
qemu_pid=$!

# kvmmanager-ctl from the ctl .deb, run on the host.
dpkg-deb -x "$ctl_deb" "$work/ctl"
ctl=("$work/ctl/usr/bin/kvmmanager-ctl" --socket "$chan" --timeout 3)
monitor() { (echo "$1"; sleep 0.5) | socat - "UNIX-CONNECT:$mon" >/dev/null; }
wait_for() {  # wait_for SECONDS what command...: polls the command until it succeeds
  local limit=$1 what=$2 start=$SECONDS
  shift 2
  while ((SECONDS - start < limit)); do
    kill -0 "$qemu_pid" 2>/dev/null || { echo "QEMU exited while waiting for: $what"; return 1; }
    if "$@" >/dev/null 2>&1; then
      echo "($what after $((SECONDS - start)) s)"
      return 0
    fi
    sleep 1
  done
  echo "timed out after ${limit}s waiting for: $what"
  return 1
}
console_has() { grep -aq "$1" "$console"; }
# Agent processes that logged "serving" (the journal is forwarded to the console with PIDs).
agent_starts() {
  grep -ao 'kvmmanager-agent\[[0-9]*\]: kvmmanager-agent\[info\] serving /dev/virtio-ports' "$console" |
    sort -u | wc -l
}
more_starts_than() { (($(agent_starts) > $1)); }

echo "--- booting $kver (accel $accel, unit profile $profile), waiting up to ${boot_timeout}s for the agent"
# Wait for the agent's own "serving" line first: pings sent while the guest boots would queue
# in the port and be answered in a burst later, slowing everything under TCG.
check "systemd started the agent during boot (its journal says it serves the port)" \
  wait_for "$boot_timeout" "agent serving" more_starts_than 0
check "agent started by systemd answers ping over the channel" \
  wait_for 120 "first ping" "${ctl[@]}" ping
check "it is the packaged agent ($version)" \
  bash -c "'${ctl[0]}' --socket '$chan' --timeout 60 --json call get_agent_info | grep -q '\"$version\"'"
# The packaged config's only write entry is /tmp/kvmmanager: the tmpfiles.d entry made it at boot.
echo "payload $$" > "$work/upload.txt"
check "with the packaged config the guest receives a file into /tmp/kvmmanager/" bash -c \
  "'${ctl[0]}' --socket '$chan' --timeout 60 cp '$work/upload.txt' :/tmp/kvmmanager/ &&
   [ \"\$('${ctl[0]}' --socket '$chan' --timeout 60 cat :/tmp/kvmmanager/upload.txt)\" = 'payload $$' ]"
# systemd logs "Started" once READY=1 arrived; ping can answer a moment before that.
check "systemd reported the service started (after READY=1)" \
  wait_for 60 "Started in the journal" console_has "Started.*KVM Manager guest agent"
check "systemd sees it active/running, Type=notify" \
  wait_for 60 "state report" bash -c "grep -aq 'kvm-report: SubState=running' '$console' && grep -aq 'kvm-report: Type=notify' '$console'"
if [[ $profile == strict ]]; then
  check "strict profile in effect (ProtectSystem=strict, NoNewPrivileges=yes)" bash -c \
    "grep -aq 'kvm-report: ProtectSystem=strict' '$console' && grep -aq 'kvm-report: NoNewPrivileges=yes' '$console'"
fi

echo "--- hot-unplug the port: BindsTo= must stop the service"
check "monitor: device_del agentport" monitor "device_del agentport"
check "service stopped when the port went" \
  wait_for 60 "stop on unplug" console_has "Stopped.*KVM Manager guest agent"
check "no answer while the port is gone" bash -c "! '${ctl[0]}' --socket '$chan' --timeout 3 ping"
starts_before=$(agent_starts)
check "the first agent logged that it serves the port" test "$starts_before" -ge 1
echo "--- plug it back: udev + systemd must start the service again"
check "monitor: device_add the port again" monitor "device_add $port_dev"
check "agent answers again after replug" wait_for 90 "ping after replug" "${ctl[@]}" ping
check "a new agent process serves (systemd started it again)" \
  wait_for 30 "second start" more_starts_than "$starts_before"

if ((failures)); then
  echo "--- guest console (last 80 lines)"
  tail -n 80 "$console" | sed 's/\x1b\[[0-9;]*m//g'
fi
finish
