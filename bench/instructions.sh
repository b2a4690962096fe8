#!/usr/bin/env bash
# Instructions executed per request by kvmmanager-agent and by qemu-ga, counted by valgrind's
# callgrind over N sequential requests on a unix socket (all threads of the process, user space
# only). Unlike a rate, the count barely moves between runs, and it is what a TCG guest pays
# for: there every guest instruction is emulated, so user-space work per request is most of an
# agent's CPU per request in the VM bench.
#   bash bench/instructions.sh            (N=2000 requests per method)
# Env: BUILD_DIR (default build), N, METHODS (default bench/methods.txt; ping is always first),
# AGENT=PATH to count another kvmmanager-agent binary (A/B of a change).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-build}
n=${N:-2000}
methods=${METHODS:-bench/methods.txt}

source bench/lib.sh
require_qga
need_cmd valgrind valgrind
[[ -f $build/build.ninja ]] || bash scripts/build.sh >/dev/null
ninja -C "$build" kvmmanager-agent kvm-loadgen >/dev/null
lg=$root/$build/bench/kvm-loadgen
agent_bin=$(realpath "${AGENT:-$build/agent/kvmmanager-agent}")

bench_init kvminstr
mkdir -p "$tmp/sandbox" "$tmp/qga-state"
cat >"$tmp/config.json" <<EOF
{"log_level":"warn","log_file":"",
 "security":{"allowed_read_paths":["$tmp/sandbox"],"allowed_write_paths":["$tmp/sandbox"]}}
EOF

# count NAME SOCKET LINE -- ARGV...: starts ARGV under callgrind, sends 50 warm-up requests,
# zeroes the counters, sends N requests, dumps, and prints instructions per request.
count() {
  local name=$1 sock=$2 line=$3 out=$tmp/cg.$1 pid
  shift 4
  rm -f "$sock" "$out"*
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$tmp/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  # Under valgrind start-up takes seconds: wait up to 60 s (wait_sock gives up after 10).
  for _ in $(seq 600); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || { echo "bench: $name never listened on $sock" >&2; exit 1; }
  "$lg" count "$sock" "$line" 50 1 1 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$lg" count "$sock" "$line" "$n" 1 1 >/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The dump after -z holds only the N requests.
  awk -v n="$n" '/^summary:|^totals:/ {print int($2 / n); exit}' "$(ls "$out".* | head -1)"
}

agent_count() {  # LABEL LINE
  count "a-$1" "$tmp/a.sock" "$2" -- "$agent_bin" --foreground \
    --config "$tmp/config.json" --listen "unix:$tmp/a.sock"
}
qga_count() {  # LABEL LINE
  count "q-$1" "$tmp/q.sock" "$2" -- qemu-ga -m unix-listen -p "$tmp/q.sock" -t "$tmp/qga-state"
}

echo "instructions: $n sequential requests per method, callgrind, host $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "| request | kvmmanager-agent | qemu-ga | agent/qemu-ga |"
echo "|---|---|---|---|"
row() {  # LABEL AGENT_LINE QGA_LINE
  local a q
  a=$(agent_count "$1" "$2")
  q=$(qga_count "$1" "$3")
  echo "| $1 | $a | $q | $(ratio "$a" "$q")x |"
}
row ping '{"jsonrpc":"2.0","method":"ping","id":{id}}' '{"execute":"guest-ping"}'
while IFS='|' read -r label aline qline; do
  [[ -z $label || $label == \#* || $qline == @* ]] && continue
  if [[ $qline == *'\n'* ]]; then  # several qemu-ga commands per call (bench/methods.txt)
    label="$label (qemu-ga: $(grep -o '"execute"' <<<"$qline" | wc -l) commands)"
    qline=${qline//\\n/$'\n'}
  fi
  row "$label" "$aline" "$qline"
done <"$methods"
