#!/usr/bin/env bash
# Installs everything the build and the tests need from Debian 12's archive (run as root).
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config
  libboost-json1.81-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  socat procps iproute2 util-linux ccache
  libssl-dev clang libclang-rt-14-dev rapidjson-dev libsimdjson-dev
  debootstrap lintian rpm fakeroot dpkg-dev qemu-system-x86 busybox-static e2fsprogs cpio
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
