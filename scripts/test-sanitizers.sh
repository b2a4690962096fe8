#!/usr/bin/env bash
# Builds and runs the test suite under ASan+UBSan (build-asan/) and/or TSan (build-tsan/).
#   bash scripts/test-sanitizers.sh [both|asan|tsan] [extra ctest args, e.g. -R '^Exec']
# The agent binary the integration tests start is the sanitized one, so its errors fail tests too.
# Left out, and said so in the output:
#  - fuzz_*: the harnesses are ASan+UBSan builds of their own (the plain run has them);
#  - label `slow` (packaging proofs): they build, install and boot the *release* packages from
#    build-release/, so no sanitized code runs in them; the plain run has them;
#  - label `vm` (vm_suite): it boots the agent in a bare initramfs as shipped, which needs the
#    static binary, and a sanitized binary cannot be linked statically; the plain run has it;
#  - TSan only, ExecIdle.*: it counts the agent's wake-ups while idle, and TSan's runtime adds a
#    thread of its own that wakes ~10 times a second; the plain and ASan runs have it.
# The soak test runs a smaller count (KVM_SOAK_REQUESTS, default 20000 here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
which=${1:-both}
(($#)) && shift
export KVM_SOAK_REQUESTS=${KVM_SOAK_REQUESTS:-20000}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# quarantine_size_mb: ASan keeps freed memory out of reuse up to this size (default 256 MB) to
# catch use-after-free; the tests that bound the agent's RSS growth (48-64 MB) would see the
# quarantine, not the agent. 16 MB still spans many requests' worth of frees.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:quarantine_size_mb=16}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
run() {  # name sanitizers
  local start=$SECONDS
  BUILD_DIR=build-$1 bash scripts/build.sh -DKVM_SANITIZE="$2" || return 1  # no set -e under ||
  local built=$SECONDS
  local exclude='^fuzz_'
  [[ $2 == thread ]] && exclude='^(fuzz_|ExecIdle\.)'
  echo "sanitizers: $1 ($2): ctest -E '$exclude' -LE '^(slow|vm)\$' ${*:3}"
  local rc=0
  (cd "build-$1" && ctest --output-on-failure -j2 --timeout 900 -E "$exclude" -LE '^(slow|vm)$' \
     "${@:3}") || rc=$?
  echo "sanitizers: $1 ($2): build $((built - start)) s, tests $((SECONDS - built)) s, rc $rc"
  return $rc
}
rc=0
[[ $which == both || $which == asan ]] && { run asan address,undefined "$@" || rc=1; }
[[ $which == both || $which == tsan ]] && { run tsan thread "$@" || rc=1; }
exit $rc
