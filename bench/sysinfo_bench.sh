#!/usr/bin/env bash
# Per-call latency of get_system_info / get_network_info / get_disk_usage through the real
# agent, next to qemu-ga's nearest commands run the same way (unix socket, one connection,
# sequential calls, compiled client). Usage: bench/sysinfo_bench.sh [ITERATIONS] (default 300).
# Needs a build (build/ or $BUILD_DIR) and qemu-ga (Debian package qemu-guest-agent).
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-300}
build_dir=${BUILD_DIR:-build}
agent_bin="$build_dir/agent/kvmmanager-agent"
[[ -x $agent_bin ]] || { echo "no $agent_bin: run scripts/build.sh first" >&2; exit 1; }
command -v qemu-ga >/dev/null || { echo "qemu-ga missing: apt-get install qemu-guest-agent" >&2; exit 1; }

tmp=$(mktemp -d /tmp/sysinfo-bench-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

client="$tmp/sysinfo_bench_client"
g++ -std=c++20 -O2 -o "$client" bench/sysinfo_bench_client.cc

echo '{"log_level":"warn"}' >"$tmp/agent.json"
"$agent_bin" --foreground --config "$tmp/agent.json" --listen "unix:$tmp/agent.sock" 2>"$tmp/agent.log" &
pids+=($!)
mkdir -p "$tmp/qga-state"
qemu-ga -m unix-listen -p "$tmp/qga.sock" -t "$tmp/qga-state" -f "$tmp/qga.pid" 2>"$tmp/qga.log" &
pids+=($!)
for _ in $(seq 100); do
  [[ -S $tmp/agent.sock && -S $tmp/qga.sock ]] && break
  sleep 0.05
done

echo "## System information methods: per-call latency, $iterations sequential calls each"
echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
printf '%-20s %10s %10s %10s %8s | %-30s %10s %10s %10s %8s | %s\n' \
  "kvmmanager-agent" "median_us" "mean_us" "p90_us" "bytes" "qemu-ga" "median_us" "mean_us" "p90_us" "bytes" "median ratio agent/qga"
for pair in get_system_info:guest-get-osinfo get_network_info:guest-network-get-interfaces \
            get_disk_usage:guest-get-fsinfo; do
  ours=${pair%%:*}
  theirs=${pair##*:}
  read -r om omean op ob < <("$client" "$tmp/agent.sock" jsonrpc "$iterations" "$ours")
  read -r qm qmean qp qb < <("$client" "$tmp/qga.sock" qga "$iterations" "$theirs")
  ratio=$(awk -v a="$om" -v b="$qm" 'BEGIN { printf "%.2f", a / b }')
  printf '%-20s %10s %10s %10s %8s | %-30s %10s %10s %10s %8s | %s\n' \
    "$ours" "$om" "$omean" "$op" "$ob" "$theirs" "$qm" "$qmean" "$qp" "$qb" "$ratio"
done
