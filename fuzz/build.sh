#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang into $1 (default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-fuzz}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not installed (scripts/deps.sh)"; exit 77; }
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S fuzz/harnesses -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
ninja -C "$dir" -j2
