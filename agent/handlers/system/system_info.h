// get_system_info: OS, kernel, host identity, time, CPU, load, memory and logged-in users,
// read from /proc, /sys, /etc and /run under a root prefix (tests use fixture trees).
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/storage_ptr.hpp>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "agent/core/unique_fd.h"
#include "agent/handlers/system/sys_common.h"

namespace kvm::sysinfo {

// The slow-changing parts of the reply, as JSON text copied into each reply as is.
struct StaticParts {
  std::string os, machine_id, fqdn, cpu;
  std::optional<std::string> zone_name;  // the time zone's name (its offset is always live)
};

// The parts of get_system_info that change rarely (os-release, machine-id, the FQDN from
// /etc/hosts, the time zone's name and rules, the CPUs from /proc/cpuinfo and sysfs) are kept
// for `ttl`, so a dashboard polling every second does not re-read and re-parse seven files per
// call: those syscalls were most of the call's cost. Logged-in users are re-read whenever utmp
// changes (one stat per call). Memory, load, uptime and hostname are always live.
class SystemInfoCache {
 public:
  explicit SystemInfoCache(std::chrono::milliseconds ttl) : ttl_(ttl) {}

 private:
  friend void AppendSystemInfo(std::string&, const SystemRoot&, SystemInfoCache*);
  using Clock = std::chrono::steady_clock;
  std::chrono::milliseconds ttl_;
  std::mutex mu_;
  bool filled_ = false;
  Clock::time_point loaded_;
  std::string hostname_;  // the FQDN below was found for this hostname
  StaticParts parts_;
  std::string utmp_path_;  // empty: no utmp at the last refresh
  struct UtmpKey {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = -1;
    bool operator==(const UtmpKey&) const = default;
  } utmp_key_;
  std::string users_;  // JSON text
  // /proc/meminfo and /proc/loadavg stay open: pread from offset 0 regenerates them, one
  // syscall instead of open, read and close.
  UniqueFd meminfo_fd_, loadavg_fd_;
};

// Appends the get_system_info result as JSON text. `cache` may be null (every part read
// afresh).
void AppendSystemInfo(std::string& out, const SystemRoot& sys, SystemInfoCache* cache = nullptr);
// The same result parsed, for tests.
boost::json::object CollectSystemInfo(const SystemRoot& sys, SystemInfoCache* cache = nullptr);

// Pieces, exposed for fixture tests.
boost::json::object OsInfo(const SystemRoot& sys);
boost::json::object CpuInfo(const SystemRoot& sys);
boost::json::object MemoryInfo(const SystemRoot& sys);
boost::json::array LoggedInUsers(const SystemRoot& sys);
// `reload_rules` re-reads /etc/localtime's rules (tzset) before computing the offset.
boost::json::object TimezoneInfo(const SystemRoot& sys, bool reload_rules = true);
// The FQDN from /etc/hosts (no DNS: the static agent cannot use NSS); null when unknown.
boost::json::value FindFqdn(const SystemRoot& sys, std::string_view hostname);
// One value of an os-release style file with shell quoting removed; nullopt when absent.
std::optional<std::string> ShellVar(std::string_view text, std::string_view key);

}  // namespace kvm::sysinfo
