#!/usr/bin/env bash
# Proof: the agent .deb installed into a fresh Debian 12 root (no systemd running, as in an image
# build) puts every file in place, enables the unit, ships the seed's default config as a conffile
# that upgrades keep, starts nothing, and removes/purges cleanly.
source "$(dirname "$0")/lib.sh"
require_root
require_tools debootstrap dpkg tar
root=$(fresh_root)
trap 'remove_root "$root"' EXIT
in_root() { chroot "$root" "$@"; }
unit=kvmmanager-agent.service
wants="/etc/systemd/system/dev-virtio\\x2dports-org.kvmmanager.agent.0.device.wants/$unit"

cp "$agent_deb" "$root/tmp/agent.deb"
echo "--- dpkg -i $(basename "$agent_deb") in a fresh Debian 12 root"
in_root dpkg -i /tmp/agent.deb
check "package installed at version $version" \
  test "$(in_root dpkg-query -W -f='${Status} ${Version}' kvmmanager-agent)" = "install ok installed $version"
for f in /usr/sbin/kvmmanager-agent /etc/kvmmanager-agent/config.json /etc/logrotate.d/kvmmanager-agent \
         /lib/systemd/system/$unit /lib/udev/rules.d/60-kvmmanager-agent.rules \
         /usr/lib/tmpfiles.d/kvmmanager-agent.conf \
         /usr/share/man/man8/kvmmanager-agent.8.gz /usr/share/doc/kvmmanager-agent/copyright \
         /usr/share/doc/kvmmanager-agent/examples/hardening-strict.conf; do
  check "file $f" test -f "$root$f"
done
check "static agent runs in the bare root and reports $version" \
  test "$(in_root /usr/sbin/kvmmanager-agent --version)" = "kvmmanager-agent $version"
check "config.json is the seed's default file" cmp "$root/etc/kvmmanager-agent/config.json" "$repo/packaging/files/config.json"
check "config.json means exactly the built-in defaults" test \
  "$(in_root kvmmanager-agent --check-config 2>/dev/null)" = \
  "$(in_root kvmmanager-agent --check-config --config /nonexistent.json 2>/dev/null)"
check "config.json is a conffile" \
  bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' kvmmanager-agent | grep -q '/etc/kvmmanager-agent/config.json'"
# The postinst's systemd-tmpfiles needs /proc, which this chroot lacks; what boot does:
systemd-tmpfiles --root="$root" --create kvmmanager-agent.conf
check "default write directory /tmp/kvmmanager made by the tmpfiles.d entry, root-only" \
  test "$(stat -c '%F %a %U' "$root/tmp/kvmmanager")" = "directory 700 root"
check "unit enabled (systemctl is-enabled)" test "$(in_root systemctl is-enabled $unit)" = enabled
check "enable symlink: port device wants the unit" \
  test "$(readlink "$root$wants")" = "/lib/systemd/system/$unit"
# --man=no: the Documentation= man page is checked with the host's man, not the root's.
check "systemd-analyze verify accepts the unit" \
  bash -c "out=\$(systemd-analyze verify --man=no --root='$root' $unit 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
echo "systemd-analyze security (default unit): $(systemd-analyze security --offline=true --root="$root" $unit | tail -1)"
dropin="$root/etc/systemd/system/$unit.d"
mkdir -p "$dropin"
cp "$root/usr/share/doc/kvmmanager-agent/examples/hardening-strict.conf" "$dropin/"
check "systemd-analyze verify accepts the unit with hardening-strict.conf" \
  bash -c "out=\$(systemd-analyze verify --man=no --root='$root' $unit 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
echo "systemd-analyze security (with hardening-strict.conf): $(systemd-analyze security --offline=true --root="$root" $unit | tail -1)"
rm -r "$dropin"
check "nothing was started in the chroot" test -z "$(processes_in_root "$root")"

echo "--- upgrade (reinstall) keeps a changed config and the admin's disable"
sed -i 's/"log_level": "info"/"log_level": "debug"/' "$root/etc/kvmmanager-agent/config.json"
in_root systemctl disable $unit 2>/dev/null
in_root dpkg -i /tmp/agent.deb
check "changed config kept" grep -q '"log_level": "debug"' "$root/etc/kvmmanager-agent/config.json"
check "no .dpkg-new/.dpkg-dist left" test -z "$(ls "$root/etc/kvmmanager-agent" | grep dpkg || true)"
check "disabled unit stays disabled" test "$(in_root systemctl is-enabled $unit)" = disabled
in_root systemctl enable $unit 2>/dev/null

echo "--- dpkg -r, then dpkg -P"
in_root dpkg -r kvmmanager-agent
check "binary removed" test ! -e "$root/usr/sbin/kvmmanager-agent"
check "unit removed" test ! -e "$root/lib/systemd/system/$unit"
check "enable symlink removed" test ! -L "$root$wants"
check "config kept after remove" test -f "$root/etc/kvmmanager-agent/config.json"
echo "--- reinstall after remove: enabled again; an admin's disable survives remove+reinstall"
in_root dpkg -i /tmp/agent.deb
check "enabled again after remove+reinstall" test "$(in_root systemctl is-enabled $unit)" = enabled
in_root systemctl disable $unit 2>/dev/null
in_root dpkg -r kvmmanager-agent
in_root dpkg -i /tmp/agent.deb
check "disabled stays disabled across remove+reinstall" test "$(in_root systemctl is-enabled $unit)" = disabled
touch "$root/var/log/kvmmanager-agent.log" "$root/var/log/kvmmanager-agent.log.1" \
  "$root/var/log/kvmmanager-agent.log.2.gz"
in_root dpkg -P kvmmanager-agent
check "config gone after purge" test ! -e "$root/etc/kvmmanager-agent"
check "log and its rotated copies gone after purge" \
  test -z "$(ls "$root/var/log" | grep kvmmanager-agent || true)"

echo "--- reinstall after purge enables again"
in_root dpkg -i /tmp/agent.deb
check "enabled again" test "$(in_root systemctl is-enabled $unit)" = enabled
check "nothing was started in the chroot" test -z "$(processes_in_root "$root")"

echo "--- the ctl package installs and runs too"
cp "$ctl_deb" "$root/tmp/ctl.deb"
in_root dpkg -i /tmp/ctl.deb
check "kvmmanager-ctl --version" test "$(in_root kvmmanager-ctl --version)" = "kvmmanager-ctl $version"
check "kvmmanager-ctl man page" test -f "$root/usr/share/man/man1/kvmmanager-ctl.1.gz"
finish
