#!/usr/bin/env bash
# Benchmarks kvmmanager-agent against qemu-ga inside one real VM: both agents run in the guest,
# each on its own virtio-serial port wired as libvirt does, and the host measures them through
# the ports' unix sockets, interleaved over several rounds; prints medians and ratios as a table.
#   bash bench/vm_bench.sh               (ROUNDS=3 SECS=3 MB=4 by default)
# Env: BUILD_DIR (default build) for kvm-loadgen and kvmmanager-ctl; the guest gets the static
# release agent from build-static/ (built here), or GUEST_AGENT=PATH (a static binary, for A/B).
# Boots with KVM when it works, else TCG: the figures are only comparable between runs with the
# same accelerator (printed first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-build}
rounds=${ROUNDS:-3}
secs=${SECS:-3}
mb=${MB:-4}
methods=${METHODS:-bench/methods.txt}

source bench/lib.sh
require_qga
[[ -f $build/build.ninja ]] || bash scripts/build.sh >/dev/null
ninja -C "$build" kvm-loadgen kvmmanager-ctl >/dev/null
guest_agent=${GUEST_AGENT:-}
if [[ -z $guest_agent ]]; then
  cmake -S . -B build-static -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVM_STATIC_AGENT=ON \
    -DKVM_BUILD_TESTS=OFF >/dev/null
  ninja -C build-static kvmmanager-agent >/dev/null
  guest_agent=build-static/agent/kvmmanager-agent
fi
lg=$root/$build/bench/kvm-loadgen
ctl=$root/$build/ctl/kvmmanager-ctl

bench_init kvmvmbench
Q=$tmp/qga.sock E=$tmp/echo.sock
# A 64 MiB virtio disk (the guest formats it ext4 and mounts it on /data), so that both agents'
# filesystem methods describe a real disk rather than only the initramfs.
truncate -s 64M "$tmp/disk.img"
start_vm vm_bench "$guest_agent" --qemu-ga "$(command -v qemu-ga)" -- \
  --extra-port "org.qemu.guest_agent.0=$Q" --extra-port "org.kvmmanager.echo.0=$E" \
  --disk "$tmp/disk.img"

# qemu-ga is probed only once the guest shows its process: a request sent earlier would wait in
# the port and its late reply would reach the next client.
deadline=$((SECONDS + 300))
until qga_pid=$("$ctl" -s "$A" exec -- pidof qemu-ga 2>/dev/null); do
  ((SECONDS < deadline)) || { echo "vm_bench: qemu-ga never started in the guest" >&2; cat "$tmp/console.log" >&2; exit 1; }
  sleep 0.5
done
"$lg" probe "$Q" '{"execute":"guest-ping"}' | grep -q return ||
  { echo "vm_bench: qemu-ga did not answer guest-ping" >&2; exit 1; }
# The agent spawns commands itself, so a command's parent is the agent.
agent_pid=$("$ctl" -s "$A" exec -- sh -c 'echo $PPID')
accel=$(sed -n 's/^run-vm: accel=//p' "$tmp/run-vm.log")

# From smaps_rollup, which walks the page tables: the 6.1 guest kernel's VmRSS lags behind
# (per-thread counters synced every 64 faults) and read 112 KiB for a freshly started agent.
guest_rss() { "$ctl" -s "$A" cat ":/proc/$1/smaps_rollup" | awk '/^Rss:/ {print $2}'; }
guest_name() { "$ctl" -s "$A" cat ":/proc/$1/status" | awk '/^Name/ {print $2}'; }
rows=()
notes=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s |' "$1" "$2" "$3" "$4" "${5:--}")"); }

echo "vm_bench: accel $accel; guest: 1 vCPU, 256 MB; $rounds rounds x ${secs}s; agent $("$ctl" -s "$A" --json call get_agent_info | grep -o '"version":"[^"]*"')"
echo "vm_bench: host $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "vm_bench: guest pids: agent $agent_pid ($(guest_name "$agent_pid")), qemu-ga $qga_pid ($(guest_name "$qga_pid"))"
rss_a0=$(guest_rss "$agent_pid") rss_q0=$(guest_rss "$qga_pid")

# The channel's own ceiling: cat echoing a third port, started through the agent only for its
# measurement. The shell holds the port open (fd 3) and reruns cat after each EOF: with no host
# connected a read returns EOF at once, and closing and reopening the port could lose the next
# host's first line (that gave a 0 for a whole round). The open is retried while the previous
# round's cat still holds the port (EBUSY). While a host is connected cat just blocks in read.
echo_start() {
  echo_handle=$("$ctl" -s "$A" --json call exec_start '{"command":"sh","args":["-c","p=/dev/virtio-ports/org.kvmmanager.echo.0; until command exec 3<>$p 2>/dev/null; do sleep 0.02; done; while :; do cat <&3 >&3 2>/dev/null; sleep 0.01; done"],"timeout_seconds":600}' |
    sed -n 's/.*"handle":\([0-9]*\).*/\1/p')
  [[ -n $echo_handle ]] || { echo "vm_bench: cannot start the guest echo" >&2; exit 1; }
}
# Waits (up to 3 s) for the tree to end: the next round's shell can open the port only then.
echo_stop() {
  "$ctl" -s "$A" call exec_kill "{\"handle\":$echo_handle}" >/dev/null
  "$ctl" -s "$A" call exec_status "{\"handle\":$echo_handle,\"wait_ms\":3000}" >/dev/null || true
}
PING='{"jsonrpc":"2.0","method":"ping","id":{id}}'
QPING='{"execute":"guest-ping","id":{id}}'
declare -A r
for ((i = 0; i < rounds; i++)); do
  for spec in "seq 1" "pipe 8"; do
    read -r name depth <<<"$spec"
    r[a_$name]+=" $(rate "$A" "$PING" "$secs" 1 "$depth" '"pong":true')"
    r[q_$name]+=" $(rate "$Q" "$QPING" "$secs" 1 "$depth" '"return"')"
    echo_start
    # A round is measured only once cat answers.
    if "$lg" probe "$E" '{"echo":"ready"}' >/dev/null; then
      r[e_$name]+=" $(rate "$E" "$PING" "$secs" 1 "$depth" '"ping"')"
    else
      notes+=("round $((i + 1)): the guest echo did not answer within 10 s; no echo sample")
    fi
    echo_stop
  done
done
for spec in "seq|ping, sequential round trips/s" "pipe|ping/s, 8 in flight on one connection"; do
  name=${spec%%|*} label=${spec#*|}
  a=$(median ${r[a_$name]}) q=$(median ${r[q_$name]}) e=$(median ${r[e_$name]})
  row "$label" "$a" "$q" "$(ratio "$a" "$q")x" "$e (agent at $(awk -v a="$a" -v e="$e" 'BEGIN {printf "%.0f", 100*a/e}')%, qemu-ga at $(awk -v q="$q" -v e="$e" 'BEGIN {printf "%.0f", 100*q/e}')%)"
done

method_rows "$A" "$Q"

# Guest CPU per request, user + system, from the process's /proc/PID/stat ticks (USER_HZ 100)
# around CPU_REQUESTS sequential requests. Under TCG this, more than the channel, is what
# separates the two agents; lower is better.
cpu_ticks() { "$ctl" -s "$A" cat ":/proc/$1/stat" | awk '{print $14 + $15}'; }
cpu_us_per_request() {  # PID SOCKET LINE
  local n=${CPU_REQUESTS:-5000} t0 t1
  t0=$(cpu_ticks "$1")
  "$lg" count "$2" "$3" "$n" 1 1 >/dev/null || { echo "-"; return; }
  t1=$(cpu_ticks "$1")
  awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.0f", (b - a) * 10000 / n}'
}
for spec in "ping|$PING|$QPING" \
  'get_system_info (qemu-ga: guest-get-osinfo)|{"jsonrpc":"2.0","method":"get_system_info","id":{id}}|{"execute":"guest-get-osinfo","id":{id}}'; do
  IFS='|' read -r label aline qline <<<"$spec"
  a=$(cpu_us_per_request "$agent_pid" "$A" "$aline")
  q=$(cpu_us_per_request "$qga_pid" "$Q" "$qline")
  row "guest CPU per $label, us (lower is better)" "$a" "$q" "$(ratio "$a" "$q")x"
done

# Transfers of $mb MiB into the guest's /tmp (tmpfs) and back: the agent the way a user does it
# (kvmmanager-ctl cp: 4 chunks in flight, sha256 checked by both ends, fsync'd commit); qemu-ga
# with guest-file-open/write/read/close at 48 KiB and 4 KiB chunks (best kept), nothing checked.
head -c $((mb * 1048576)) /dev/urandom >"$tmp/src.bin"
mibps() { awk -v mb="$mb" -v t="$1" 'BEGIN {printf "%.2f", mb / t}'; }
now() { date +%s.%N; }
aw=() ar=() qw=() qr=()
for ((i = 0; i < rounds; i++)); do
  t0=$(now); "$ctl" -s "$A" -t 120 cp "$tmp/src.bin" :/tmp/bench.bin >/dev/null; t1=$(now)
  "$ctl" -s "$A" -t 120 cp :/tmp/bench.bin "$tmp/back.bin" >/dev/null; t2=$(now)
  cmp -s "$tmp/src.bin" "$tmp/back.bin" || { echo "vm_bench: the agent returned other bytes" >&2; exit 1; }
  "$ctl" -s "$A" rm :/tmp/bench.bin
  aw+=("$(mibps "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")")
  ar+=("$(mibps "$(awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}')")")
  bw=0 br=0
  for chunk in 49152 4096; do
    out=$("$lg" qga-transfer "$Q" /tmp/qga.bin "$mb" "$chunk" || true)  # failed: no sample
    bw=$(awk -v a="$bw" -v b="$(awk '/^write_mbps/ {print $2}' <<<"$out")" 'BEGIN {print (b > a ? b : a)}')
    br=$(awk -v a="$br" -v b="$(awk '/^read_mbps/ {print $2}' <<<"$out")" 'BEGIN {print (b > a ? b : a)}')
  done
  "$ctl" -s "$A" rm :/tmp/qga.bin 2>/dev/null || true
  [[ $bw == 0 ]] || qw+=("$bw")
  [[ $br == 0 ]] || qr+=("$br")
done
a=$(median "${aw[@]}") q=$(median "${qw[@]}")
row "file host -> guest, $mb MiB, MiB/s" "$a" "$q" "$(ratio "$a" "$q")x"
a=$(median "${ar[@]}") q=$(median "${qr[@]}")
row "file guest -> host, $mb MiB, MiB/s" "$a" "$q" "$(ratio "$a" "$q")x"

rss_a1=$(guest_rss "$agent_pid") rss_q1=$(guest_rss "$qga_pid")
row "guest RSS when both first answered, KiB" "$rss_a0" "$rss_q0" "$(ratio "$rss_a0" "$rss_q0")x"
row "guest RSS after the runs above, KiB" "$rss_a1" "$rss_q1" "$(ratio "$rss_a1" "$rss_q1")x"

echo
echo "| measurement (in the VM, over virtio-serial) | kvmmanager-agent | qemu-ga | agent/qemu-ga | echo ceiling (cat on a third port) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "- Transfers: the agent's figures include sha256 on both ends and a durable commit; qemu-ga's"
echo "  include neither. Under TCG the guest CPU (qemu64) has no SHA-NI, so the agent hashes in software."
echo "- qemu-ga is dynamically linked: its libraries sit on the initramfs (tmpfs) and count in its RSS."
for n in "${notes[@]}"; do echo "- $n"; done
