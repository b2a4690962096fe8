// get_system_info: OS, kernel, host identity, time, CPU, load, memory and logged-in users,
// read from /proc, /sys, /etc and /run under a root prefix (tests use fixture trees).
#pragma once

#include <boost/json/object.hpp>
#include <string_view>

#include "agent/handlers/system/sys_common.h"

namespace kvm::sysinfo {

boost::json::object CollectSystemInfo(const SystemRoot& sys);

// Pieces, exposed for fixture tests.
boost::json::object OsInfo(const SystemRoot& sys);
boost::json::object CpuInfo(const SystemRoot& sys);
boost::json::object MemoryInfo(const SystemRoot& sys);
boost::json::array LoggedInUsers(const SystemRoot& sys);
boost::json::object TimezoneInfo(const SystemRoot& sys);
// The FQDN from /etc/hosts (no DNS: the static agent cannot use NSS); null when unknown.
boost::json::value FindFqdn(const SystemRoot& sys, std::string_view hostname);
// One value of an os-release style file with shell quoting removed; nullopt when absent.
std::optional<std::string> ShellVar(std::string_view text, std::string_view key);

}  // namespace kvm::sysinfo
