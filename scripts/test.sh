#!/usr/bin/env bash
# The test command (CI runs it through .ci/run). Installs what is needed, then runs, each timed:
#   plain: the deployable static build (build/) and the whole ctest suite;
#   asan:  ASan+UBSan build (build-asan/) and the suite (scripts/test-sanitizers.sh says what
#          it leaves out: fuzz, packaging proofs and vm_suite, which do not run sanitized code);
#   tsan:  TSan build (build-tsan/) and the same suite.
# Every part runs even when an earlier one fails; the exit status is 1 if any failed.
# KVM_TEST_PARTS (default "plain asan tsan") picks parts for a quicker local run; the parts left
# out are printed. Times on a 2-core machine: docs/robustness.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
parts=${KVM_TEST_PARTS:-plain asan tsan}
summary=()
failed=0
part() {  # name command...
  local name=$1 start=$SECONDS rc=0
  shift
  if [[ " $parts " != *" $name "* ]]; then
    summary+=("$name: NOT RUN (KVM_TEST_PARTS=\"$parts\")")
    return
  fi
  echo "test.sh: === $name ==="
  "$@" || rc=$?
  ((rc == 0)) || failed=1
  summary+=("$name: $( ((rc == 0)) && echo ok || echo "FAILED (rc $rc)"), $((SECONDS - start)) s")
}
plain() {  # (set -e does not apply inside `part`'s `||`, hence the &&)
  bash scripts/build.sh -DKVM_STATIC_AGENT=ON &&  # the agent under test is the deployable binary
    (cd build && ctest --output-on-failure -j2 --timeout 600)
}
part plain plain
part asan bash scripts/test-sanitizers.sh asan
part tsan bash scripts/test-sanitizers.sh tsan
printf 'test.sh: %s\n' "${summary[@]}"
exit $failed
