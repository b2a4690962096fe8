#!/usr/bin/env bash
# A/B of two kvmmanager-agent binaries inside one real VM, next to the channel's lower bound.
# A change to the request path that saves a few microseconds per ping is lost in the spread
# between VM boots under TCG; here both binaries and bench/guest_echo.c serve the same second
# virtio-serial port in turn, round after round, in one guest. For each: sequential and
# pipelined (8 in flight) ping rates, and guest CPU per sequential ping (from /proc ticks).
#   bash bench/vm_ab.sh AGENT_A AGENT_B     (static binaries; ROUNDS=4 N=20000 SECS=3)
# The guest's own agent (on the main port, used for control) is AGENT_A. Needs gcc for the echo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[[ $# -eq 2 && -x $1 && -x $2 ]] || { echo "usage: $0 AGENT_A AGENT_B (static binaries)" >&2; exit 2; }
a_bin=$(realpath "$1") b_bin=$(realpath "$2")
build=${BUILD_DIR:-build}
rounds=${ROUNDS:-4} n=${N:-20000} secs=${SECS:-3}

source bench/lib.sh
[[ -f $build/build.ninja ]] || bash scripts/build.sh >/dev/null
ninja -C "$build" kvm-loadgen kvmmanager-ctl >/dev/null
lg=$root/$build/bench/kvm-loadgen
ctl=$root/$build/ctl/kvmmanager-ctl
command -v gcc >/dev/null || { echo "vm_ab: needs gcc (apt-get install gcc)" >&2; exit 1; }

bench_init kvmvmab
gcc -O2 -static -o "$tmp/guest_echo" bench/guest_echo.c
E=$tmp/second.sock
start_vm vm_ab "$a_bin" -- --extra-port "org.kvmmanager.echo.0=$E"
# The guest's /tmp is writable by the test config; copies are verified by sha256 (ctl cp).
"$ctl" -s "$A" -t 300 cp "$a_bin" :/tmp/agent_a >/dev/null
"$ctl" -s "$A" -t 300 cp "$b_bin" :/tmp/agent_b >/dev/null
"$ctl" -s "$A" -t 300 cp "$tmp/guest_echo" :/tmp/guest_echo >/dev/null
"$ctl" -s "$A" exec -- chmod +x /tmp/agent_a /tmp/agent_b /tmp/guest_echo

PING='{"jsonrpc":"2.0","method":"ping","id":{id}}'
P=/dev/virtio-ports/org.kvmmanager.echo.0
ticks() { "$ctl" -s "$A" cat ":/proc/$1/stat" | awk '{print $14 + $15}'; }
declare -A seq pipe cpu
for ((r = 1; r <= rounds; r++)); do
  for v in agent_a agent_b guest_echo; do
    if [[ $v == guest_echo ]]; then args="[\"$P\"]"; else args="[\"-f\",\"-l\",\"warn\",\"--device\",\"$P\"]"; fi
    h=$("$ctl" -s "$A" --json call exec_start "{\"command\":\"/tmp/$v\",\"args\":$args,\"timeout_seconds\":3600}" |
      sed -n 's/.*"handle":\([0-9]*\).*/\1/p')
    [[ -n $h ]] || { echo "vm_ab: cannot start $v in the guest" >&2; exit 1; }
    pid=""
    for _ in $(seq 50); do pid=$("$ctl" -s "$A" exec -- pidof "$v" 2>/dev/null) && break; sleep 0.1; done
    if [[ -n $pid ]] && "$lg" probe "$E" "$PING" >/dev/null 2>&1; then
      s=$(rate "$E" "$PING" "$secs" 1 1) p=$(rate "$E" "$PING" "$secs" 1 8)
      t0=$(ticks "$pid")
      "$lg" count "$E" "$PING" "$n" 1 1 >/dev/null
      t1=$(ticks "$pid")
      c=$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) * 10000 / n}')
      seq[$v]+=" $s" pipe[$v]+=" $p" cpu[$v]+=" $c"
      echo "vm_ab: round $r $v: sequential $s/s, pipelined $p/s, guest CPU $c us per ping"
    else
      echo "vm_ab: round $r $v: no answer on the second port" >&2
    fi
    "$ctl" -s "$A" call exec_kill "{\"handle\":$h}" >/dev/null || true
    "$ctl" -s "$A" call exec_status "{\"handle\":$h,\"wait_ms\":3000}" >/dev/null || true
  done
done
echo
echo "| on the second port ($rounds rounds, medians) | ping sequential/s | ping pipelined (8)/s | guest CPU per sequential ping, us |"
echo "|---|---|---|---|"
for v in agent_a agent_b guest_echo; do
  case $v in agent_a) label="A: $1" ;; agent_b) label="B: $2" ;; *) label="guest_echo (epoll + read + write)" ;; esac
  echo "| $label | $(median ${seq[$v]:-}) | $(median ${pipe[$v]:-}) | $(median ${cpu[$v]:-}) |"
done
