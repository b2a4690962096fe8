#!/usr/bin/env bash
# Runs libFuzzer harnesses for a bounded time on the seed corpus in fuzz/corpus/<harness>.
#   bash fuzz/run.sh HARNESS|all [SECONDS] [BUILD_DIR]      e.g. bash fuzz/run.sh all 3600
# HARNESS: jsonrpc, config, base64, path_policy or read_reply (e.g. bash fuzz/run.sh path_policy 600).
# New interesting inputs go to $FUZZ_WORK (default /tmp/kvm-fuzz/<harness>), not the repo; a crash
# leaves crash-* there: add it to fuzz/corpus/<harness>/ and a regression test beside the code.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
harness=${1:?usage: fuzz/run.sh HARNESS|all [SECONDS] [BUILD_DIR]}
secs=${2:-20}
dir=$(realpath -m "${3:-build-fuzz}")
command -v clang++ >/dev/null || { echo "fuzz: clang++ not installed (scripts/deps.sh)"; exit 77; }
list=("$harness")
[[ $harness == all ]] && list=(jsonrpc config base64 path_policy read_reply)
# Runs started side by side (one per core) would configure the same build dir at once.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
# Always (incremental): a harness built before the code under test changed would fuzz old code.
bash fuzz/build.sh "$dir" >/dev/null
flock -u 9
for h in "${list[@]}"; do
  work=${FUZZ_WORK:-/tmp/kvm-fuzz}/$h
  mkdir -p "$work"
  echo "fuzz: $h for ${secs}s"
  # libFuzzer exits 77 on a crash by default, which ctest reads as "skipped" (77 is what this
  # script returns without clang): failures exit 1.
  (cd "$work" && "$dir/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
     -max_len=16384 -print_final_stats=1 -error_exitcode=1 -timeout_exitcode=1 \
     "$work" "$root/fuzz/corpus/$h")
done
