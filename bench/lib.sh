# Shared by the bench scripts (source it): a scratch directory removed on exit together with
# every process recorded in $pids, and qemu-ga started the same way everywhere.

# bench_init NAME: sets $tmp (/tmp/NAME-XXXXXX) and $pids, and cleans both up on exit.
bench_init() {
  tmp=$(mktemp -d "/tmp/$1-XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # qemu-ga 7.2 has been seen ignoring SIGTERM (blocked in a futex): do not wait forever.
  for _ in $(seq 20); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}

# need_cmd CMD PACKAGE: installs PACKAGE from Debian's archive when CMD is missing (a fresh
# machine has neither qemu-ga nor valgrind), or exits naming the package.
need_cmd() {
  command -v "$1" >/dev/null && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          --no-install-recommends "$2"; }; } >/dev/null 2>&1
  fi
  command -v "$1" >/dev/null ||
    { echo "bench: $1 missing (apt-get install $2)" >&2; exit 2; }
}

require_qga() { need_cmd qemu-ga qemu-guest-agent; }

# wait_sock PATH: waits up to 10 s for a listening socket to appear.
wait_sock() {
  for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done
  echo "bench: $1 never appeared" >&2
  exit 1
}

# start_qga SOCKET: qemu-ga in unix-listen mode (state, pid file and log under $tmp); sets
# $qga_pid once the socket exists.
start_qga() {
  mkdir -p "$tmp/qga-state"
  rm -f "$1"
  qemu-ga -m unix-listen -p "$1" -t "$tmp/qga-state" -f "$tmp/qga.pid" -l "$tmp/qga.log" &
  qga_pid=$!
  pids+=("$qga_pid")
  wait_sock "$1"
}

# Medians of samples ("-" when there are none), a/b with two decimals ("-" if either is
# missing), and a kvm-loadgen rate (needs $lg) where a failed round gives no sample.
median() { printf '%s\n' "$@" | sort -g | awk 'NF {a[++n]=$1} END {if (n==0) print "-"; else if (n%2) print a[(n+1)/2]; else print (a[n/2]+a[n/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0==0 || a=="-" || b=="-") print "-"; else printf "%.2f", a/b}'; }
rate() { { "$lg" rate "$@" || true; } | awk '/^rate/ {print $2}'; }

# method_rows AGENT_SOCK QGA_SOCK: one row (via the script's row()) per line of $methods
# (label | agent request | qemu-ga request; "@exec" = guest-exec + status), medians of $rounds
# rounds of $secs s. A method the agent does not serve is skipped with a line in $notes. Runs
# the script's ensure_qga, if it has one, before each qemu-ga round.
method_rows() {
  local sa=$1 sq=$2 label aline qline probe a q qname i
  while IFS='|' read -r label aline qline; do
    [[ -z $label || $label == \#* ]] && continue
    probe=$("$lg" probe "$sa" "${aline//\{id\}/1}" || true)
    if [[ $probe == *'"code":-32601'* ]]; then
      notes+=("$label: not served by this build (-32601), skipped.")
      continue
    fi
    if [[ $probe != *'"result"'* ]]; then
      notes+=("$label: agent answered ${probe:0:160} ; skipped (adjust $methods).")
      continue
    fi
    local as=() qs=()
    for ((i = 0; i < rounds; i++)); do
      if declare -F ensure_qga >/dev/null; then ensure_qga; fi
      as+=("$(rate "$sa" "$aline" "$secs" 1 1 '"result"')")
      if [[ $qline == @exec ]]; then
        qs+=("$({ "$lg" qga-exec "$sq" "$secs" || true; } | awk '/^rate/ {print $2}')")
      else
        qs+=("$(rate "$sq" "${qline//\\n/$'\n'}" "$secs" 1 1 '"return"')")
      fi
    done
    a=$(median "${as[@]}") q=$(median "${qs[@]}")
    qname=$([[ $qline == @exec ]] && echo "guest-exec+status" ||
      grep -o '"execute":"[^"]*"' <<<"$qline" | cut -d'"' -f4 | paste -sd+)
    row "$label calls/s (qemu-ga: $qname)" "$a" "$q" "$(ratio "$a" "$q")x" "-"
  done <"$methods"
}

# start_vm NAME AGENT [BUILD-INITRAMFS ARGS...] -- [RUN-VM ARGS...]: a TCG/KVM guest with AGENT
# on the main port ($A, under $tmp), booted in the background (its pid joins $pids), and waits
# up to 300 s for that agent to answer a ping ($ctl must be set). NAME prefixes the errors.
start_vm() {
  local name=$1 agent=$2
  shift 2
  local initramfs_args=()
  while (($#)) && [[ $1 != -- ]]; do initramfs_args+=("$1"); shift; done
  (($#)) && shift
  bash tests/vm/build-initramfs.sh --agent "$agent" ${initramfs_args[@]+"${initramfs_args[@]}"} \
    --out "$tmp/vm" 2>"$tmp/initramfs.log" || { cat "$tmp/initramfs.log" >&2; exit 1; }
  A=$tmp/agent.sock
  bash tests/vm/run-vm.sh --dir "$tmp/vm" --sock "$A" "$@" --console "$tmp/console.log" \
    --timeout 3600 2>"$tmp/run-vm.log" >"$tmp/run-vm.out" &
  pids+=($!)
  local deadline=$((SECONDS + 300))
  until "$ctl" -s "$A" -t 2 ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) ||
      { echo "$name: the agent never answered" >&2; cat "$tmp/run-vm.log" "$tmp/console.log" >&2; exit 1; }
    sleep 0.5
  done
}
