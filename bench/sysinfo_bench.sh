#!/usr/bin/env bash
# Per-call latency (microseconds) of get_system_info / get_network_info / get_disk_usage through the real
# agent, next to qemu-ga's nearest commands run the same way (unix socket, one connection,
# sequential calls, compiled client). Usage: bench/sysinfo_bench.sh [ITERATIONS] (default 300).
# Needs a build (build/ or $BUILD_DIR) and qemu-ga (Debian package qemu-guest-agent).
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-300}
build_dir=${BUILD_DIR:-build}
agent_bin="$build_dir/agent/kvmmanager-agent"
[[ -x $agent_bin ]] || { echo "no $agent_bin: run scripts/build.sh first" >&2; exit 1; }
source bench/lib.sh
require_qga
bench_init sysinfo-bench

client="$tmp/sysinfo_bench_client"
g++ -std=c++20 -O2 -o "$client" bench/sysinfo_bench_client.cc

echo '{"log_level":"warn"}' >"$tmp/agent.json"
"$agent_bin" --foreground --config "$tmp/agent.json" --listen "unix:$tmp/agent.sock" 2>"$tmp/agent.log" &
pids+=($!)
start_qga "$tmp/qga.sock"
wait_sock "$tmp/agent.sock"

echo "## System information methods: per-call latency, $iterations sequential calls each"
echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
printf '%-20s %10s %17s %8s | %-30s %10s %17s %8s | %s\n' \
  "kvmmanager-agent" "median_us" "round_medians" "bytes" "qemu-ga" "median_us" "round_medians" "bytes" "median ratio agent/qga"
# Rounds alternate agent and qemu-ga, so load that drifts during the run hits both alike; each
# side's figure is the median of its round medians, with the range of round medians beside it.
rounds=${ROUNDS:-5}
per_round=$(( (iterations + rounds - 1) / rounds ))
compare() {  # label-ours ours-methods label-theirs theirs-methods
  local am=() qm=() ab qb
  for ((r = 0; r < rounds; r++)); do
    read -r m _ _ ab < <("$client" "$tmp/agent.sock" jsonrpc "$per_round" "$2"); am+=("$m")
    read -r m _ _ qb < <("$client" "$tmp/qga.sock" qga "$per_round" "$4"); qm+=("$m")
  done
  stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%s %s %s", a[int((NR+1)/2)], a[1], a[NR]}'; }
  read -r a alo ahi <<<"$(stats "${am[@]}")"
  read -r q qlo qhi <<<"$(stats "${qm[@]}")"
  printf '%-20s %10s %17s %8s | %-30s %10s %17s %8s | %s\n' "$1" "$a" "$alo-$ahi" "$ab" "$3" "$q" \
    "$qlo-$qhi" "$qb" "$(awk -v a="$a" -v b="$q" 'BEGIN { printf "%.2f", a / b }')"
}
# ping / guest-ping: the round-trip floor of each agent (transport and dispatch only).
for pair in ping:guest-ping get_system_info:guest-get-osinfo get_network_info:guest-network-get-interfaces \
            get_disk_usage:guest-get-fsinfo; do
  compare "${pair%%:*}" "${pair%%:*}" "${pair##*:}" "${pair##*:}"
done
# get_system_info returns what qemu-ga spreads over several commands; time them back to back.
qga_set=guest-get-osinfo,guest-get-host-name,guest-get-timezone,guest-get-users,guest-get-vcpus
compare get_system_info get_system_info "5 cmds (same information)" "$qga_set"
echo "qemu-ga 5 cmds: $qga_set"
