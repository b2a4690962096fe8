# Shared helpers of the packaging proof tests (sourced). Usage: source lib.sh PKGDIR
set -euo pipefail
pkg_dir=$(cd "${1:?usage: $0 PKGDIR (build-packages.sh output)}" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
failures=0

# The version of the packages in pkg_dir (exactly one set must be there).
version=$(ls "$pkg_dir" | sed -n 's/^kvmmanager-agent_\(.*\)_amd64\.deb$/\1/p')
[[ $(wc -w <<<"$version") -eq 1 ]] || { echo "FAIL: expected one kvmmanager-agent .deb in $pkg_dir" >&2; exit 1; }
agent_deb="$pkg_dir/kvmmanager-agent_${version}_amd64.deb"
ctl_deb="$pkg_dir/kvmmanager-ctl_${version}_amd64.deb"
agent_rpm="$pkg_dir/kvmmanager-agent-$version.x86_64.rpm"
ctl_rpm="$pkg_dir/kvmmanager-ctl-$version.x86_64.rpm"

require_root() {
  [[ $(id -u) -eq 0 ]] || { echo "FAIL: $(basename "$0") needs root (chroot, dpkg --root)" >&2; exit 1; }
}
require_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "FAIL: $t is missing (bash scripts/deps.sh)" >&2; exit 1; }
  done
}

check() {  # check "what" command...: runs the command, records pass/fail
  local what=$1
  shift
  if "$@"; then
    echo "ok:   $what"
  else
    echo "FAIL: $what"
    failures=$((failures + 1))
  fi
}
finish() {
  if ((failures)); then
    echo "$failures check(s) failed"
    exit 1
  fi
  echo "all checks passed"
}

# Unpacks the cached pristine Debian 12 root into a new directory; prints its path. The caller
# removes it (remove_root) in its EXIT trap.
fresh_root() {
  local tarball dir
  tarball=$(bash "$here/debian-root.sh")
  dir=$(mktemp -d /var/tmp/kvm-pkg-root.XXXXXX)
  tar -C "$dir" --numeric-owner -xf "$tarball"
  echo "$dir"
}
remove_root() {
  local dir=$1
  [[ -n $dir && -d $dir && $dir == /var/tmp/kvm-pkg-root.* ]] || return 0
  # Never rm -rf through a mount (e.g. /proc bind-mounted by something inside).
  if findmnt -rn -o TARGET | grep -q "^$dir/"; then
    findmnt -rn -o TARGET | grep "^$dir/" | sort -r | xargs -r -n1 umount -l
  fi
  rm -rf --one-file-system "$dir"
}
# Processes whose root directory is inside $1 (things a maintainer script left running).
processes_in_root() {
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/root" 2>/dev/null) == "$1" ]] && echo "${p#/proc/} $(tr '\0' ' ' <"$p/cmdline")"
  done
  return 0
}
