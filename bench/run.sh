#!/usr/bin/env bash
# Benchmarks kvmmanager-agent against qemu-ga (Debian's qemu-guest-agent) and a bare echo server
# on unix sockets, interleaved over several rounds; prints medians and ratios as a table.
#   bash bench/run.sh                 (ROUNDS=5 SECS=2 by default)
#   ROUNDS=3 SECS=1 NO_STATIC=1 bash bench/run.sh
# Env: BUILD_DIR (default build), METHODS (default bench/methods.txt), NO_STATIC=1 skips the
# static release build used for the binary-size row, IDLE_SECS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-build}
rounds=${ROUNDS:-5}
secs=${SECS:-2}
idle_secs=${IDLE_SECS:-10}
methods=${METHODS:-bench/methods.txt}

source bench/lib.sh
require_qga
[[ -f $build/build.ninja ]] || bash scripts/build.sh >/dev/null
ninja -C "$build" kvmmanager-agent kvm-loadgen kvm-echo-server >/dev/null
agent_bin=$root/$build/agent/kvmmanager-agent
lg=$root/$build/bench/kvm-loadgen
echo_bin=$root/$build/bench/kvm-echo-server

bench_init kvmbench
mkdir -p "$tmp/sandbox" "$tmp/st-state"
cat >"$tmp/config.json" <<EOF
{"log_level":"warn","log_file":"","max_concurrent_requests":16,
 "security":{"allowed_read_paths":["$tmp/sandbox"],"allowed_write_paths":["$tmp/sandbox"],
             "max_file_size_mb":64}}
EOF
agent_cmd=("$agent_bin" --foreground --config "$tmp/config.json" --log-level warn)
static_bin=
if [[ ${NO_STATIC:-0} != 1 ]]; then
  cmake -S . -B build-static -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVM_STATIC_AGENT=ON \
    -DKVM_BUILD_TESTS=OFF >/dev/null
  ninja -C build-static kvmmanager-agent >/dev/null
  static_bin=$root/build-static/agent/kvmmanager-agent
fi
"${agent_cmd[@]}" --listen "unix:$tmp/agent.sock" 2>"$tmp/agent.err" & agent_pid=$!; pids+=($agent_pid)
start_qga "$tmp/qga.sock"
"$echo_bin" "$tmp/echo.sock" & echo_pid=$!; pids+=($echo_pid)
wait_sock "$tmp/agent.sock"; wait_sock "$tmp/echo.sock"
# qemu-ga 7.2 in unix-listen mode exits (status 0) after some rounds of 8 concurrent clients;
# it is restarted before each measurement that needs it, and the restarts are counted.
qga_restarts=0
ensure_qga() {
  kill -0 "$qga_pid" 2>/dev/null && return 0
  qga_restarts=$((qga_restarts + 1))
  start_qga "$tmp/qga.sock"
}
A=$tmp/agent.sock Q=$tmp/qga.sock E=$tmp/echo.sock
PING='{"jsonrpc":"2.0","method":"ping","id":{id}}'
QPING='{"execute":"guest-ping","id":{id}}'

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Proportional set size: shared library pages divided among the processes that map them.
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
# Sum of voluntary+involuntary context switches over all threads, and utime+stime ticks.
wakeups() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

rows=()
notes=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s |' "$@")"); }

echo "bench: $rounds rounds x ${secs}s per measurement; agent $(${agent_bin} --version)"
echo "bench: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
rss_agent_start=$(rss_kb $agent_pid); rss_qga_start=$(rss_kb $qga_pid)
pss_agent_start=$(pss_kb $agent_pid); pss_qga_start=$(pss_kb $qga_pid)
if [[ -n $static_bin ]]; then
  "$static_bin" --foreground --config "$tmp/config.json" --log-level warn \
    --listen "unix:$tmp/static.sock" & static_pid=$!; pids+=($static_pid)
  wait_sock "$tmp/static.sock"; sleep 0.2
  rss_static_start=$(rss_kb $static_pid); pss_static_start=$(pss_kb $static_pid)
fi

# --- ping throughput, interleaved rounds ---------------------------------------------------
declare -A r
for ((i = 0; i < rounds; i++)); do
  for spec in "seq 1 1" "pipe 1 8" "conc 8 1"; do
    read -r name clients depth <<<"$spec"
    r[a_$name]+=" $(rate "$A" "$PING" "$secs" "$clients" "$depth" '"pong":true')"
    ensure_qga
    r[q_$name]+=" $(rate "$Q" "$QPING" "$secs" "$clients" "$depth" '"return"')"
    r[e_$name]+=" $(rate "$E" "$PING" "$secs" "$clients" "$depth")"
  done
done
for spec in "seq|ping, sequential round trips/s (1 client)" \
            "pipe|ping/s, 1 client pipelining 8" \
            "conc|ping/s, 8 concurrent clients"; do
  name=${spec%%|*} label=${spec#*|}
  a=$(median ${r[a_$name]}) q=$(median ${r[q_$name]}) e=$(median ${r[e_$name]})
  row "$label" "$a" "$q" "$(ratio "$a" "$q")x" "$e (agent at $(awk -v a="$a" -v e="$e" 'BEGIN {printf "%.0f", 100*a/e}')%)"
done
notes+=("qemu-ga serves one connection at a time: with 8 clients, 7 wait unanswered until the first leaves.")

# --- sequential ping with client and server sharing one CPU ---------------------------------
# Across the 2 vCPUs every round trip pays two cross-CPU wake-ups (an IPI through the
# hypervisor, tens of us each), the same for every server: that is most of the sequential
# figure above. On one CPU a wake-up is a plain context switch, and the rate shows what each
# server spends per request. Every thread of the server is pinned for its turn only.
pinned_rate() {  # PID SOCKET LINE [EXPECT]
  local pid=$1; shift
  taskset -a -cp 0 "$pid" >/dev/null
  { taskset -c 0 "$lg" rate "$1" "$2" "$secs" 1 1 ${3:+"$3"} || true; } | awk '/^rate/ {print $2}'
  taskset -a -cp "0-$(($(nproc) - 1))" "$pid" >/dev/null
}
if command -v taskset >/dev/null && (($(nproc) > 1)); then
  for ((i = 0; i < rounds; i++)); do
    r[a_one]+=" $(pinned_rate "$agent_pid" "$A" "$PING" '"pong":true')"
    ensure_qga
    r[q_one]+=" $(pinned_rate "$qga_pid" "$Q" "$QPING" '"return"')"
    r[e_one]+=" $(pinned_rate "$echo_pid" "$E" "$PING")"
  done
  a=$(median ${r[a_one]}) q=$(median ${r[q_one]}) e=$(median ${r[e_one]})
  row "ping, sequential, client and server on one CPU" "$a" "$q" "$(ratio "$a" "$q")x" "$e (agent at $(awk -v a="$a" -v e="$e" 'BEGIN {printf "%.0f", 100*a/e}')%; echo/qemu-ga $(ratio "$e" "$q")x)"
fi

# --- methods vs qemu-ga counterparts ---------------------------------------------------------
method_rows "$A" "$Q"

# --- file transfer, 10 MB each way -------------------------------------------------------------
# bench/transfer_bench moves the file through a private agent the way kvmmanager-ctl cp does
# (sha256-verified, 48 KiB per message, 4 in flight) and through qemu-ga at its best chunk size
# (medians of 5 runs each; qemu-ga's chunk size is the one with the best median);
# the echo server gives the ceiling for the same 64 KiB lines.
ninja -C "$build" transfer_bench >/dev/null
tb=$("$root/$build/bench/transfer_bench" --mb 10 --repeat 5 --agent "$agent_bin")
mbps() { awk -v k="$1" 'index($0, k) == 1 {for (i = 1; i <= NF; i++) if ($(i+1) == "MB/s") {print $i; exit}}' <<<"$tb"; }
aw=$(mbps "agent upload") ar=$(mbps "agent download")
qw=$(mbps "qemu-ga guest-file-write") qr=$(mbps "qemu-ga guest-file-read") raw=$(mbps "raw socket stream")
chunk_of() { awk -v k="$1" 'index($0, k) {for (i = 1; i < NF; i++) if ($i == "chunk") print $(i+1)}' <<<"$tb"; }
qwc=$(chunk_of "qemu-ga guest-file-write") qrc=$(chunk_of "qemu-ga guest-file-read")
ew=()
for ((i = 0; i < 3; i++)); do ew+=("$("$lg" echo-transfer "$E" 10 49152 | awk '/^mbps/ {print $2}')"); done
ec=$(median "${ew[@]}")
row "file upload 10 MB, MB/s (qemu-ga: best chunk, $qwc B)" "$aw" "$qw" "$(ratio "$aw" "$qw")x" "$ec (echo of 64 KiB lines); raw socket $raw"
row "file download 10 MB, MB/s (qemu-ga: best chunk, $qrc B)" "$ar" "$qr" "$(ratio "$ar" "$qr")x" "$ec; raw x 3/4 = $(awk -v r="$raw" 'BEGIN {printf "%.0f", r * 3 / 4}')"
notes+=("file transfer: medians of 5 runs each (qemu-ga at the chunk size with the best median); the agent's figures include sha256 verification on both ends and durable (fsync) commits of uploads; qemu-ga does neither.")

# --- memory ----------------------------------------------------------------------------------------
ensure_qga
"$lg" count "$A" "$PING" 100000 1 8 >/dev/null
"$lg" count "$Q" "$QPING" 100000 1 8 >/dev/null
[[ -n $static_bin ]] && "$lg" count "$tmp/static.sock" "$PING" 100000 1 8 >/dev/null
sleep 1
rss_agent_after=$(rss_kb $agent_pid); rss_qga_after=$(rss_kb $qga_pid)
pss_agent_after=$(pss_kb $agent_pid); pss_qga_after=$(pss_kb $qga_pid)
row "idle RSS after start, KiB" "$rss_agent_start" "$rss_qga_start" "$(ratio "$rss_agent_start" "$rss_qga_start")x" "-"
row "idle RSS after 100,000 pings, KiB" "$rss_agent_after" "$rss_qga_after" "$(ratio "$rss_agent_after" "$rss_qga_after")x" "-"
row "idle PSS after start, KiB" "$pss_agent_start" "$pss_qga_start" "$(ratio "$pss_agent_start" "$pss_qga_start")x" "-"
row "idle PSS after 100,000 pings, KiB" "$pss_agent_after" "$pss_qga_after" "$(ratio "$pss_agent_after" "$pss_qga_after")x" "-"
if [[ -n $static_bin ]]; then
  rss_static_after=$(rss_kb $static_pid)
  row "static agent: idle RSS after start, KiB" "$rss_static_start" "$rss_qga_start" "$(ratio "$rss_static_start" "$rss_qga_start")x" "-"
  row "static agent: idle RSS after 100,000 pings, KiB" "$rss_static_after" "$rss_qga_after" "$(ratio "$rss_static_after" "$rss_qga_after")x" "-"
fi

# --- idle CPU and wakeups ----------------------------------------------------------------------------
idle() {  # pid socket connected(0/1) -> "ticks wakeups"
  local pid=$1 sock=$2 hold=$3 hp=
  if ((hold)); then "$lg" hold "$sock" $((idle_secs + 1)) & hp=$!; sleep 0.5; fi
  local t0 w0 t1 w1
  t0=$(cpu_ticks "$pid"); w0=$(wakeups "$pid")
  sleep "$idle_secs"
  t1=$(cpu_ticks "$pid"); w1=$(wakeups "$pid")
  [[ -n $hp ]] && wait $hp
  echo "$((t1 - t0)) $((w1 - w0))"
}
ensure_qga
for hold in 0 1; do
  read -r at aw_ <<<"$(idle $agent_pid "$A" $hold)"
  read -r qt qw_ <<<"$(idle $qga_pid "$Q" $hold)"
  what=$([[ $hold == 1 ]] && echo connected || echo "no client")
  row "idle ${idle_secs}s ($what): CPU ticks / context switches" "$at / $aw_" "$qt / $qw_" "-" "-"
done

# --- start-up time to the first answered ping ------------------------------------------------------
# A failed round gives no sample (rather than ending the whole bench under set -e).
startup_ms() { { "$lg" startup "$@" || true; } | awk '/^startup_ms/ {print $2}'; }
sa=() sq=()
for ((i = 0; i < rounds; i++)); do
  sa+=($(startup_ms "$tmp/st-agent.sock" "${PING//\{id\}/1}" -- "${agent_cmd[@]}" --listen "unix:$tmp/st-agent.sock"))
  sq+=($(startup_ms "$tmp/st-qga.sock" "${QPING//\{id\}/1}" -- "$(command -v qemu-ga)" -m unix-listen -p "$tmp/st-qga.sock" -t "$tmp/st-state" -f "$tmp/st.pid" -l "$tmp/st.log"))
done
a=$(median "${sa[@]}") q=$(median "${sq[@]}")
row "start-up to first answered ping, ms" "$a" "$q" "$(ratio "$a" "$q")x" "-"
if [[ -n $static_bin ]]; then
  ss=()
  for ((i = 0; i < rounds; i++)); do
    ss+=($(startup_ms "$tmp/st-static.sock" "${PING//\{id\}/1}" -- "$static_bin" --foreground --config "$tmp/config.json" --log-level warn --listen "unix:$tmp/st-static.sock"))
  done
  s_=$(median "${ss[@]}")
  row "static agent: start-up to first answered ping, ms" "$s_" "$q" "$(ratio "$s_" "$q")x" "-"
fi

# --- binary size and shared-library needs ----------------------------------------------------------
needed() { readelf -d "$1" 2>/dev/null | awk '/NEEDED/ {gsub(/[\[\]]/, "", $5); printf "%s ", $5}'; }
qga_path=$(command -v qemu-ga)
cp "$agent_bin" "$tmp/agent-dyn" && strip "$tmp/agent-dyn"
kind=$([[ -n $(needed "$agent_bin") ]] && echo dynamic || echo static)  # build/ is static under scripts/test.sh
row "stripped size, $kind $build/ build, bytes" "$(stat -c %s "$tmp/agent-dyn")" "$(stat -c %s "$qga_path")" "$(ratio "$(stat -c %s "$tmp/agent-dyn")" "$(stat -c %s "$qga_path")")x" "-"
if [[ -n $static_bin ]]; then
  st=$static_bin
  row "stripped static release binary, bytes" "$(stat -c %s $st)" "-" "-" "-"
  row "static binary NEEDED" "$(needed $st)none" "-" "-" "-"
fi
agent_needed=$(needed "$agent_bin")
row "NEEDED ($kind $build/ build)" "${agent_needed:-none}" "$(needed "$qga_path")" "-" "-"

((qga_restarts > 0)) && notes+=("qemu-ga exited by itself $qga_restarts time(s) after 8-client rounds and was restarted.")
echo
echo "| measurement | kvmmanager-agent | qemu-ga | agent/qemu-ga | echo ceiling |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
for n in "${notes[@]}"; do echo "- $n"; done
