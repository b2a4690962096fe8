// systemd's readiness protocol (sd_notify(3)) without libsystemd, which cannot be linked into
// the static agent: one datagram with "KEY=VALUE" lines to the AF_UNIX socket in $NOTIFY_SOCKET.
#pragma once

#include <string>
#include <string_view>

namespace kvm {

// Sends `state` (e.g. "READY=1") to `socket_path`; a leading '@' means an abstract socket.
// Returns "" on success, else what failed (the caller logs it; notification is best effort).
std::string SdNotifyTo(std::string_view socket_path, std::string_view state);

// Sends to $NOTIFY_SOCKET; does nothing (returns "") when it is unset, i.e. not under systemd
// with Type=notify.
std::string SdNotify(std::string_view state);

}  // namespace kvm
