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
  # qemu-ga 7.2 was once seen ignoring SIGTERM (blocked in a futex): do not wait forever.
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

require_qga() {
  command -v qemu-ga >/dev/null ||
    { echo "bench: qemu-ga missing (apt-get install qemu-guest-agent)" >&2; exit 2; }
}

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
