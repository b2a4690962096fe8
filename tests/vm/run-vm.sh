#!/usr/bin/env bash
# Boots the test VM with its agent channel wired like the seed's libvirt XML: a virtio-serial controller
# and a virtserialport named org.kvmmanager.agent.0 whose chardev is a unix socket the host connects to.
#
#   run-vm.sh --dir DIR --sock PATH [--qmp PATH] [--console FILE] [--disk FILE] [--no-port]
#             [--no-reboot] [--accel auto|kvm|tcg] [--timeout SECONDS] [--extra-port NAME=PATH]...
#
# DIR holds vmlinuz and initramfs.cpio.gz (build-initramfs.sh). --no-port defines the chardev but attaches
# no port, so a test can hot-plug one over QMP (id "agentport", chardev "agentch"). --extra-port adds
# another port named NAME on the unix socket PATH (bench/vm_bench.sh: qemu-ga's channel, an echo).
# Prints the accelerator chosen, then runs QEMU in the foreground; with --timeout QEMU is killed
# after that many seconds.
# Exit status is QEMU's (124 on timeout).
set -euo pipefail

die() { echo "run-vm: $*" >&2; exit 2; }
extra=()
dir="" sock="" qmp="" console="" disk="" port=1 noreboot=0 accel=auto limit=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --sock) sock="$2"; shift 2 ;;
    --qmp) qmp="$2"; shift 2 ;;
    --extra-port) extra+=("$2"); shift 2 ;;
    --console) console="$2"; shift 2 ;;
    --disk) disk="$2"; shift 2 ;;
    --no-port) port=0; shift ;;
    --no-reboot) noreboot=1; shift ;;
    --accel) accel="$2"; shift 2 ;;
    --timeout) limit="$2"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -f "$dir/vmlinuz" ] && [ -f "$dir/initramfs.cpio.gz" ] || die "--dir must hold vmlinuz and initramfs.cpio.gz"
[ -n "$sock" ] || die "--sock is required"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed (build-initramfs.sh installs it)"

# /dev/kvm can exist and still not run guests (nested setups). Probe it for real: a 64 KiB "BIOS" whose
# reset vector writes 0x42 to an isa-debug-exit port, which makes QEMU exit with (0x42 << 1) | 1 = 133.
probe_accel() {
  local bios rc
  bios="$(mktemp)"
  head -c 65520 /dev/zero | tr '\0' '\364' >"$bios"  # hlt everywhere
  # mov al,0x42; out 0xf4,al; hlt; jmp $-3; then padding up to the 16-byte reset vector slot.
  printf '\260\102\346\364\364\353\375\364\364\364\364\364\364\364\364\364' >>"$bios"
  rc=0
  # The same CPU model the guest gets: on some nested hosts KVM runs this probe with QEMU's default
  # CPU and then fails to set an MSR of -cpu host (qemu aborts), or hangs a real kernel.
  local cpu=()
  [ "$1" = kvm ] && cpu=(-cpu host)
  # In a subshell so the shell's own "Aborted" report of a crashed QEMU goes quiet too.
  (timeout -k 2 10 qemu-system-x86_64 -accel "$1" "${cpu[@]}" -M pc -nodefaults -no-user-config \
    -display none -monitor none -serial none -bios "$bios" -device isa-debug-exit,iobase=0xf4,iosize=1 \
    >/dev/null 2>&1; exit $?) 2>/dev/null || rc=$?
  rm -f "$bios"
  [ "$rc" -eq 133 ]
}

case "$accel" in
  auto)
    if [ -e /dev/kvm ] && probe_accel kvm; then
      accel=kvm why="/dev/kvm runs guests"
    else
      accel=tcg why="$([ -e /dev/kvm ] && echo '/dev/kvm present but cannot run a guest' || echo 'no /dev/kvm')"
      probe_accel tcg || die "QEMU cannot run even the TCG probe guest"
    fi
    ;;
  kvm | tcg) why="requested" ;;
  *) die "--accel must be auto, kvm or tcg" ;;
esac
echo "run-vm: accel=$accel ($why)" >&2

args=(-accel "$accel" -M pc -m 256 -smp 1 -nodefaults -no-user-config -display none
  -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio.gz"
  -append "console=ttyS0 quiet panic=-1"
  -device virtio-serial,id=vser0
  -chardev "socket,id=agentch,path=$sock,server=on,wait=off")
[ "$accel" = kvm ] && args+=(-cpu host)
[ "$port" -eq 1 ] && args+=(-device "virtserialport,bus=vser0.0,chardev=agentch,id=agentport,name=org.kvmmanager.agent.0")
n=0
for spec in ${extra[@]+"${extra[@]}"}; do
  name="${spec%%=*}" path="${spec#*=}"
  [ -n "$name" ] && [ "$path" != "$spec" ] || die "--extra-port wants NAME=PATH, got: $spec"
  n=$((n + 1))
  args+=(-chardev "socket,id=extrach$n,path=$path,server=on,wait=off"
    -device "virtserialport,bus=vser0.0,chardev=extrach$n,id=extraport$n,name=$name")
done
args+=(-serial "file:${console:-/dev/null}")
# A user-mode NIC with a fixed MAC: network info must show the VM's interface. restrict=on: no traffic out.
args+=(-nic "user,model=virtio-net-pci,mac=52:54:00:4b:56:4d,restrict=on")
[ -n "$disk" ] && args+=(-drive "file=$disk,if=virtio,format=raw")
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
[ "$noreboot" -eq 1 ] && args+=(-no-reboot)

# exec: QEMU (or timeout, which forwards INT/TERM to it) takes this process's place, so whoever started
# this script can stop QEMU by signalling that pid or its process group.
[ "$limit" -gt 0 ] && exec timeout -k 5 "$limit" qemu-system-x86_64 "${args[@]}"
exec qemu-system-x86_64 "${args[@]}"
