#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh -DKVM_STATIC_AGENT=ON  # the agent under test is the deployable static binary
cd build
ctest --output-on-failure -j2 --timeout 600
