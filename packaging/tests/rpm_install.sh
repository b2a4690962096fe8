#!/usr/bin/env bash
# The .rpm's scriptlets, run by rpm itself in a chroot with systemctl but no running systemd:
# install enables the unit (and starts nothing), erase disables it and removes the files.
# (The root is Debian's, with an empty rpm database: --nodeps; it is usrmerged like Fedora/RHEL.)
source "$(dirname "$0")/lib.sh"
require_root
require_tools rpm debootstrap
root=$(fresh_root)
trap 'remove_root "$root"' EXIT
unit=kvmmanager-agent.service
wants="/etc/systemd/system/dev-virtio\\x2dports-org.kvmmanager.agent.0.device.wants/$unit"

rpm --root "$root" --initdb
echo "--- rpm -i $(basename "$agent_rpm")"
rpm --root "$root" -i --nodeps "$agent_rpm" 2>&1 | grep -v 'Alien\|assuming you know' || true
check "rpm -q" test "$(rpm --root "$root" -q kvmmanager-agent)" = "kvmmanager-agent-$version-1.x86_64"
check "binary runs" test "$(chroot "$root" /usr/sbin/kvmmanager-agent --version)" = "kvmmanager-agent $version"
check "unit enabled" test "$(chroot "$root" systemctl is-enabled $unit)" = enabled
# The postinst's systemd-tmpfiles needs /proc, which this chroot lacks; what boot does:
systemd-tmpfiles --root="$root" --create kvmmanager-agent.conf
check "default write directory /tmp/kvmmanager made by the tmpfiles.d entry, root-only" \
  test "$(stat -c '%F %a %U' "$root/tmp/kvmmanager")" = "directory 700 root"
# Resolved inside the root: Debian's systemctl names /lib/..., which is /usr/lib/... (usrmerge).
check "enable symlink points at the packaged unit" \
  test "$(chroot "$root" readlink -f "$wants")" = "/usr/lib/systemd/system/$unit"
check "nothing was started in the chroot" test -z "$(processes_in_root "$root")"
echo "--- upgrade-style reinstall keeps a changed config"
sed -i 's/"log_level": "info"/"log_level": "debug"/' "$root/etc/kvmmanager-agent/config.json"
rpm --root "$root" -U --replacepkgs --nodeps "$agent_rpm" 2>&1 | grep -v 'Alien\|assuming you know' || true
check "changed config kept, no .rpmnew" bash -c \
  "grep -q '\"log_level\": \"debug\"' '$root/etc/kvmmanager-agent/config.json' && ! ls '$root/etc/kvmmanager-agent' | grep -q rpmnew"
check "still enabled after upgrade" test "$(chroot "$root" systemctl is-enabled $unit)" = enabled
echo "--- rpm -e"
rpm --root "$root" -e kvmmanager-agent 2>&1 | grep -v 'Alien\|assuming you know' || true
check "binary removed" test ! -e "$root/usr/sbin/kvmmanager-agent"
check "enable symlink removed" test ! -L "$root$wants"
check "changed config saved as .rpmsave" test -f "$root/etc/kvmmanager-agent/config.json.rpmsave"
finish
