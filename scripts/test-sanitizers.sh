#!/usr/bin/env bash
# Builds and runs the whole test suite under ASan+UBSan (build-asan/) and then TSan (build-tsan/).
#   bash scripts/test-sanitizers.sh            both
#   bash scripts/test-sanitizers.sh asan|tsan  one of them
# The agent binary the integration tests start is the sanitized one, so its errors fail tests too.
# The fuzz tests are left out here (they are ASan+UBSan builds of their own); the soak test runs
# a smaller count (KVM_SOAK_REQUESTS, default 20000 here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
which=${1:-both}
export KVM_SOAK_REQUESTS=${KVM_SOAK_REQUESTS:-20000}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
run() {  # name sanitizers
  local start=$SECONDS
  BUILD_DIR=build-$1 bash scripts/build.sh -DKVM_SANITIZE="$2"
  local built=$SECONDS
  (cd "build-$1" && ctest --output-on-failure -j2 --timeout 900 -E '^fuzz_')
  echo "sanitizers: $1 ($2): build $((built - start)) s, tests $((SECONDS - built)) s"
}
[[ $which == both || $which == asan ]] && run asan address,undefined
[[ $which == both || $which == tsan ]] && run tsan thread
exit 0
