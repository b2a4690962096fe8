#!/usr/bin/env bash
# Lint: lintian reports no errors on either .deb (warnings are printed and documented in
# docs/packaging.md), and rpm shows the right files, config flags, scripts and metadata.
source "$(dirname "$0")/lib.sh"
require_tools lintian rpm
for deb in "$agent_deb" "$ctl_deb"; do
  echo "--- lintian $(basename "$deb")"
  out=$(lintian --no-cfg --display-info --show-overrides --tag-display-limit 0 "$deb" 2>&1 || true)
  echo "${out:-(no tags)}"
  check "lintian: no errors on $(basename "$deb")" test -z "$(grep '^E:' <<<"$out" || true)"
done

echo "--- rpm -qpi $(basename "$agent_rpm")"
rpm -qpi "$agent_rpm"
echo "--- rpm -qpl $(basename "$agent_rpm")"
list=$(rpm -qpl "$agent_rpm")
echo "$list"
for f in /usr/sbin/kvmmanager-agent /etc/kvmmanager-agent/config.json \
         /usr/lib/systemd/system/kvmmanager-agent.service \
         /usr/lib/udev/rules.d/60-kvmmanager-agent.rules /usr/share/man/man8/kvmmanager-agent.8.gz; do
  check "agent rpm has $f" grep -qx "$f" <<<"$list"
done
check "agent rpm: version $version, arch x86_64" \
  test "$(rpm -qp --qf '%{VERSION} %{ARCH}' "$agent_rpm")" = "$version x86_64"
# FILEFLAGS: c = %config, n = noreplace.
check "config.json is %config(noreplace)" test \
  "$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$agent_rpm" | grep '^/etc/kvmmanager-agent/config.json ')" \
  = "/etc/kvmmanager-agent/config.json cn"
check "rpm config.json is the seed's default" \
  cmp <(rpm2cpio "$agent_rpm" | cpio -i --quiet --to-stdout ./etc/kvmmanager-agent/config.json) \
      "$repo/packaging/files/config.json"
check "agent rpm binary is static" bash -c \
  "rpm2cpio '$agent_rpm' | cpio -i --quiet --to-stdout ./usr/sbin/kvmmanager-agent > '$pkg_dir/.agent-from-rpm' &&
   ! readelf -d '$pkg_dir/.agent-from-rpm' | grep -q NEEDED; r=\$?; rm -f '$pkg_dir/.agent-from-rpm'; exit \$r"
echo "--- rpm -qp --scripts $(basename "$agent_rpm")"
rpm -qp --scripts "$agent_rpm"
check "agent rpm enables on install and disables on removal" bash -c \
  "rpm -qp --scripts '$agent_rpm' | grep -q 'enable kvmmanager-agent' && rpm -qp --scripts '$agent_rpm' | grep -q 'disable kvmmanager-agent'"

echo "--- rpm -qpi / -qpl / -qpR $(basename "$ctl_rpm")"
rpm -qpi "$ctl_rpm"
rpm -qpl "$ctl_rpm"
rpm -qpR "$ctl_rpm"
check "ctl rpm has the binary and man page" bash -c \
  "rpm -qpl '$ctl_rpm' | grep -qx /usr/bin/kvmmanager-ctl && rpm -qpl '$ctl_rpm' | grep -qx /usr/share/man/man1/kvmmanager-ctl.1.gz"
check "ctl rpm requires libstdc++ (generated from the binary)" bash -c "rpm -qpR '$ctl_rpm' | grep -q 'libstdc++.so.6'"
finish
