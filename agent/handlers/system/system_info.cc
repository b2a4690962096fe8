#include "agent/handlers/system/system_info.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <utmp.h>

#include <boost/json.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>

#include "agent/core/file_util.h"
#include "protocol/json_write.h"
#include "version.h"

namespace kvm::sysinfo {
namespace json = boost::json;
namespace {

json::value StrOrNull(const std::optional<std::string>& s) {
  if (!s || s->empty()) return nullptr;
  return json::string(ToValidUtf8(*s));
}

// "Key : value" lines of /proc/meminfo and /proc/cpuinfo.
std::pair<std::string_view, std::string_view> KeyValue(std::string_view line, char sep) {
  size_t colon = line.find(sep);
  if (colon == std::string_view::npos) return {Trim(line), {}};
  return {Trim(line.substr(0, colon)), Trim(line.substr(colon + 1))};
}

}  // namespace

std::optional<std::string> ShellVar(std::string_view text, std::string_view key) {
  std::optional<std::string> found;
  for (auto raw : SplitLines(text)) {
    std::string_view line = Trim(raw);
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos || Trim(line.substr(0, eq)) != key) continue;
    std::string_view v = line.substr(eq + 1);
    std::string out;
    // Shell-style: '...' literal, "..." with \-escapes, bare words with \-escapes.
    char quote = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      char c = v[i];
      if (quote == '\'') {
        if (c == '\'')
          quote = 0;
        else
          out.push_back(c);
      } else if (c == '\\' && i + 1 < v.size()) {
        out.push_back(v[++i]);
      } else if (quote == '"') {
        if (c == '"')
          quote = 0;
        else
          out.push_back(c);
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '#' || c == ' ' || c == '\t') {
        break;  // an unquoted blank ends the value (a trailing comment follows)
      } else {
        out.push_back(c);
      }
    }
    found = out;  // the last assignment wins, as in a shell
  }
  return found;
}

json::object OsInfo(const SystemRoot& sys) {
  std::optional<std::string> id, name, version, version_id, pretty, codename, id_like, variant;
  std::string source;
  for (const char* path : {"/etc/os-release", "/usr/lib/os-release"}) {
    if (auto text = ReadText(sys, path, 64 * 1024)) {
      id = ShellVar(*text, "ID");
      name = ShellVar(*text, "NAME");
      version = ShellVar(*text, "VERSION");
      version_id = ShellVar(*text, "VERSION_ID");
      pretty = ShellVar(*text, "PRETTY_NAME");
      codename = ShellVar(*text, "VERSION_CODENAME");
      id_like = ShellVar(*text, "ID_LIKE");
      variant = ShellVar(*text, "VARIANT");
      source = path;
      break;
    }
  }
  if (source.empty()) {
    // Old or minimal systems: LSB file, then the distribution's own release file.
    if (auto text = ReadText(sys, "/etc/lsb-release", 64 * 1024)) {
      name = ShellVar(*text, "DISTRIB_ID");
      if (name) {
        id = *name;
        for (auto& c : *id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
      version_id = ShellVar(*text, "DISTRIB_RELEASE");
      pretty = ShellVar(*text, "DISTRIB_DESCRIPTION");
      codename = ShellVar(*text, "DISTRIB_CODENAME");
      source = "/etc/lsb-release";
    } else if (auto rh = ReadText(sys, "/etc/redhat-release", 4096)) {
      pretty = std::string(Trim(*rh));
      source = "/etc/redhat-release";
    } else if (auto deb = ReadText(sys, "/etc/debian_version", 4096)) {
      id = "debian";
      name = "Debian GNU/Linux";
      version_id = std::string(Trim(*deb));
      source = "/etc/debian_version";
    } else if (auto alp = ReadText(sys, "/etc/alpine-release", 4096)) {
      id = "alpine";
      name = "Alpine Linux";
      version_id = std::string(Trim(*alp));
      source = "/etc/alpine-release";
    }
  }
  // Defaults from the os-release specification.
  if (!id || id->empty()) id = "linux";
  if (!name || name->empty()) name = "Linux";
  if (!pretty || pretty->empty()) pretty = version_id ? *name + " " + *version_id : *name;
  return json::object{
      {"id", StrOrNull(id)},
      {"name", StrOrNull(name)},
      {"version", StrOrNull(version)},
      {"version_id", StrOrNull(version_id)},
      {"pretty_name", StrOrNull(pretty)},
      {"version_codename", StrOrNull(codename)},
      {"id_like", StrOrNull(id_like)},
      {"variant", StrOrNull(variant)},
      {"source", source.empty() ? json::value(nullptr) : json::value(source)},
  };
}

json::object CpuInfo(const SystemRoot& sys) {
  std::string model, vendor;
  std::vector<std::pair<int64_t, std::optional<double>>> cpus;  // processor id, MHz
  if (auto text = ReadText(sys, "/proc/cpuinfo", 4 << 20)) {
    std::string arch_model;  // fallbacks used by non-x86 kernels
    for (auto line : SplitLines(*text)) {
      auto [k, v] = KeyValue(line, ':');
      if (k == "processor") {
        if (auto n = ParseU64(v)) cpus.emplace_back(static_cast<int64_t>(*n), std::nullopt);
      } else if (k == "model name" && model.empty()) {
        model = v;
      } else if ((k == "vendor_id" || k == "vendor") && vendor.empty()) {
        vendor = v;
      } else if (k == "CPU implementer" && vendor.empty()) {
        vendor = v;
      } else if ((k == "cpu model" || k == "cpu" || k == "uarch" || k == "Processor" ||
                  k == "Hardware") &&
                 arch_model.empty()) {
        arch_model = v;
      } else if ((k == "cpu MHz" || k == "clock") && !cpus.empty()) {
        std::string_view num = v;
        if (num.size() > 3 && num.substr(num.size() - 3) == "MHz") num.remove_suffix(3);
        cpus.back().second = ParseDouble(Trim(num));
      }
    }
    if (model.empty()) model = arch_model;
  }
  auto present = ReadText(sys, "/sys/devices/system/cpu/present", 4096);
  if (!present) present = ReadText(sys, "/sys/devices/system/cpu/possible", 4096);
  auto online = ReadText(sys, "/sys/devices/system/cpu/online", 4096);
  std::optional<std::vector<unsigned>> present_list, online_list;
  if (present) present_list = ParseCpuList(*present);
  if (online) online_list = ParseCpuList(*online);
  // /proc/cpuinfo lists only online CPUs; sysfs knows the rest.
  size_t logical = present_list ? present_list->size() : cpus.size();
  size_t online_count = online_list ? online_list->size() : cpus.size();

  json::array per_cpu;
  for (auto& [id, mhz] : cpus) {
    if (!mhz) {
      char path[96];
      std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%lld/cpufreq/scaling_cur_freq",
                    static_cast<long long>(id));
      if (auto khz = ReadAttr(sys, path)) {
        if (auto k = ParseU64(*khz)) mhz = static_cast<double>(*k) / 1000.0;
      }
    }
    per_cpu.push_back(
        json::object{{"cpu", id}, {"mhz", mhz ? json::value(*mhz) : json::value(nullptr)}});
  }
  json::array online_ids;
  if (online_list) {
    for (unsigned c : *online_list) online_ids.push_back(c);
  }
  return json::object{
      {"model", model.empty() ? json::value(nullptr) : json::value(ToValidUtf8(model))},
      {"vendor", vendor.empty() ? json::value(nullptr) : json::value(ToValidUtf8(vendor))},
      {"logical_count", logical},
      {"online_count", online_count},
      {"online", std::move(online_ids)},
      {"per_cpu", std::move(per_cpu)},
  };
}

namespace {

// The figures of /proc/meminfo that get_system_info reports, in bytes.
struct MemoryFigures {
  std::optional<uint64_t> total, available, free, used, buffers, cache, shared, swap_total,
      swap_free;
};

MemoryFigures ParseMeminfo(const std::optional<std::string>& text) {
  // Only the keys used below are parsed, in one pass that looks at each line's key and nothing
  // else (meminfo has ~50 lines and this runs on every call; splitting and trimming every line
  // was most of this function's time).
  static constexpr std::string_view kKeys[] = {"MemTotal", "MemFree",      "Buffers",
                                               "Cached",   "SReclaimable", "MemAvailable",
                                               "Shmem",    "SwapTotal",    "SwapFree"};
  enum { kTotal, kFree, kBuffers, kCached, kReclaim, kAvailable, kShmem, kSwapTotal, kSwapFree };
  std::optional<uint64_t> bytes[std::size(kKeys)];
  if (text) {
    std::string_view rest = *text;
    // The keys sit in the first ~26 of ~55 lines: stop once all are seen.
    size_t missing = std::size(kKeys);
    while (!rest.empty() && missing > 0) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view key = line.substr(0, colon);
      for (size_t k = 0; k < std::size(kKeys); ++k) {
        if (key != kKeys[k]) continue;
        auto f = Trim(line.substr(colon + 1));
        size_t digits = 0;  // up to the unit ("kB")
        while (digits < f.size() && f[digits] != ' ' && f[digits] != '\t') ++digits;
        auto n = ParseU64(f.substr(0, digits));
        if (n && !bytes[k]) --missing;
        if (n) bytes[k] = *n * 1024;  // values are in KiB ("kB")
        break;
      }
    }
  }
  MemoryFigures m;
  m.total = bytes[kTotal];
  m.free = bytes[kFree];
  m.buffers = bytes[kBuffers];
  // buff/cache as free(1) counts it: page cache plus reclaimable slab.
  if (bytes[kCached]) m.cache = *bytes[kCached] + bytes[kReclaim].value_or(0);
  m.available = bytes[kAvailable];
  if (!m.available && m.free) {  // kernels before 3.14
    m.available = *m.free + m.buffers.value_or(0) + m.cache.value_or(0);
  }
  if (m.total && m.free) {
    uint64_t not_used = *m.free + m.buffers.value_or(0) + m.cache.value_or(0);
    m.used = *m.total > not_used ? *m.total - not_used : 0;
  }
  m.shared = bytes[kShmem];
  m.swap_total = bytes[kSwapTotal];
  m.swap_free = bytes[kSwapFree];
  return m;
}

void WriteMemory(std::string& out, const MemoryFigures& m) {
  JsonObjectWriter w(out);
  w.OptionalUint("total_bytes", m.total);
  w.OptionalUint("available_bytes", m.available);
  w.OptionalUint("free_bytes", m.free);
  w.OptionalUint("used_bytes", m.used);
  w.OptionalUint("buffers_bytes", m.buffers);
  w.OptionalUint("cached_bytes", m.cache);
  w.OptionalUint("shared_bytes", m.shared);
  w.OptionalUint("swap_total_bytes", m.swap_total);
  w.OptionalUint("swap_free_bytes", m.swap_free);
  w.Close();
}

json::object ParseObject(const std::string& text) { return json::parse(text).as_object(); }

}  // namespace

json::object MemoryInfo(const SystemRoot& sys) {
  std::string text;
  WriteMemory(text, ParseMeminfo(ReadText(sys, "/proc/meminfo", 64 * 1024)));
  return ParseObject(text);
}

json::array LoggedInUsers(const SystemRoot& sys) {
  json::array users;
  auto data = ReadText(sys, "/run/utmp", 16 << 20);
  if (!data) data = ReadText(sys, "/var/run/utmp", 16 << 20);
  if (!data) return users;
  // Records have this libc's struct utmp layout (the file is written through the same ABI);
  // read directly because getutent() is not usable from a static binary everywhere.
  auto field = [](const char* p, size_t max) {
    return ToValidUtf8(std::string_view(p, strnlen(p, max)));
  };
  for (size_t off = 0; off + sizeof(struct utmp) <= data->size(); off += sizeof(struct utmp)) {
    struct utmp u;
    std::memcpy(&u, data->data() + off, sizeof u);
    if (u.ut_type != USER_PROCESS || u.ut_user[0] == '\0') continue;
    std::string host = field(u.ut_host, sizeof u.ut_host);
    users.push_back(json::object{
        {"name", field(u.ut_user, sizeof u.ut_user)},
        {"tty", field(u.ut_line, sizeof u.ut_line)},
        {"host", host.empty() ? json::value(nullptr) : json::value(host)},
        {"login_time", static_cast<int64_t>(u.ut_tv.tv_sec)},
        {"pid", static_cast<int64_t>(u.ut_pid)},
    });
  }
  return users;
}

namespace {

// The zone's name is the path below zoneinfo/ that /etc/localtime links to (systemd's rule),
// else Debian's /etc/timezone. nullopt when neither names one.
std::optional<std::string> ZoneName(const SystemRoot& sys) {
  std::optional<std::string> name;
  if (auto target = ResolveLink(sys.Path("/etc/localtime"))) {
    size_t pos = target->find("/zoneinfo/");
    if (pos != std::string::npos) {
      name = target->substr(pos + 10);
      if (name->rfind("posix/", 0) == 0)
        name = name->substr(6);
      else if (name->rfind("right/", 0) == 0)
        name = name->substr(6);
    }
  }
  if (!name) name = ReadAttr(sys, "/etc/timezone");
  if (name && name->empty()) name.reset();
  return name;
}

// The time zone object: `name` as found by ZoneName, the rest from libc for this moment.
void WriteZone(std::string& out, const std::optional<std::string>& name, bool reload_rules) {
  // The offset comes from libc's reading of the live /etc/localtime (TZif parsing is not NSS).
  // tzset() re-reads that file; localtime_r alone keeps the rules already loaded (and still
  // follows their DST transitions).
  if (reload_rules) ::tzset();
  time_t now = std::time(nullptr);
  struct tm tm {};
  ::localtime_r(&now, &tm);
  long off = tm.tm_gmtoff;
  long hours = std::labs(off) / 3600, minutes = std::labs(off) % 3600 / 60;
  const char text[] = {off < 0 ? '-' : '+',
                       static_cast<char>('0' + hours / 10 % 10),
                       static_cast<char>('0' + hours % 10),
                       ':',
                       static_cast<char>('0' + minutes / 10),
                       static_cast<char>('0' + minutes % 10)};  // "+05:30" (offsets < 100 h)
  JsonObjectWriter w(out);
  w.OptionalString("name", name);
  if (tm.tm_zone) {
    w.String("abbreviation", tm.tm_zone);
  } else {
    w.Null("abbreviation");
  }
  w.Int("utc_offset_seconds", off);
  w.String("utc_offset", std::string_view(text, sizeof text));
  w.Bool("dst", tm.tm_isdst > 0);
  w.Close();
}

}  // namespace

json::object TimezoneInfo(const SystemRoot& sys, bool reload_rules) {
  std::string text;
  WriteZone(text, ZoneName(sys), reload_rules);
  return ParseObject(text);
}

json::value FindFqdn(const SystemRoot& sys, std::string_view hostname) {
  if (hostname.empty()) return nullptr;
  auto hosts = ReadText(sys, "/etc/hosts", 1 << 20);
  if (hosts) {
    // Like the files NSS backend: the canonical (first) name of the first line naming us.
    for (auto raw : SplitLines(*hosts)) {
      std::string_view line = raw.substr(0, raw.find('#'));
      auto f = SplitFields(line);
      if (f.size() < 2) continue;
      bool match = false;
      for (size_t i = 1; i < f.size(); ++i) match = match || f[i] == hostname;
      if (match) {
        if (f[1].find('.') != std::string_view::npos) return json::string(ToValidUtf8(f[1]));
        break;
      }
    }
  }
  if (hostname.find('.') != std::string_view::npos) return json::string(ToValidUtf8(hostname));
  return nullptr;
}

namespace {

StaticParts ReadStaticParts(const SystemRoot& sys, std::string_view hostname) {
  StaticParts parts;
  AppendJson(parts.os, OsInfo(sys));
  std::optional<std::string> id = ReadAttr(sys, "/etc/machine-id");
  if (!id || id->empty()) id = ReadAttr(sys, "/var/lib/dbus/machine-id");
  AppendJson(parts.machine_id, StrOrNull(id));
  AppendJson(parts.fqdn, FindFqdn(sys, hostname));
  AppendJson(parts.cpu, CpuInfo(sys));
  parts.zone_name = ZoneName(sys);
  return parts;
}

std::string UsersText(const SystemRoot& sys) {
  std::string text;
  AppendJson(text, LoggedInUsers(sys));
  return text;
}

// The load_average object, from the text of /proc/loadavg ("0.95 0.76 1.16 2/90 31987").
void WriteLoad(std::string& out, const std::optional<std::string>& loadavg) {
  std::optional<double> avg[3];
  std::optional<uint64_t> running, total;
  if (loadavg) {
    auto f = SplitFields(Trim(*loadavg));
    for (size_t i = 0; i < 3 && i < f.size(); ++i) avg[i] = ParseDouble(f[i]);
    if (f.size() > 3) {
      size_t slash = f[3].find('/');
      if (slash != std::string_view::npos) {
        running = ParseU64(f[3].substr(0, slash));
        total = ParseU64(f[3].substr(slash + 1));
      }
    }
  }
  JsonObjectWriter w(out);
  w.OptionalDouble("1m", avg[0]);
  w.OptionalDouble("5m", avg[1]);
  w.OptionalDouble("15m", avg[2]);
  w.OptionalUint("running_tasks", running);
  w.OptionalUint("total_tasks", total);
  w.Close();
}

}  // namespace

void AppendSystemInfo(std::string& out, const SystemRoot& sys, SystemInfoCache* cache) {
  // The live system answers from syscalls where /proc would cost an open/read/close each
  // (uname, clocks); a fixture root is read from its files.
  const bool live = sys.root.empty();
  utsname uts{};
  ::uname(&uts);
  auto from_proc = [&](const char* path, const char* fallback) {
    if (live) return std::string(fallback);
    auto v = ReadAttr(sys, path);
    return v && !v->empty() ? *v : std::string(fallback);
  };
  std::string hostname = from_proc("/proc/sys/kernel/hostname", uts.nodename);

  // Slow-changing parts: from the cache while it is fresh and still describes this system.
  // The cache stays locked while the reply is written: its texts are copied straight in.
  StaticParts fresh;
  const StaticParts* parts = &fresh;
  std::string fresh_users;
  const std::string* users = &fresh_users;
  std::optional<std::string> loadavg_text, meminfo_text;
  bool reload_zone_rules = true;
  std::unique_lock<std::mutex> cache_lock;
  if (cache) {
    cache_lock = std::unique_lock(cache->mu_);
    auto now = SystemInfoCache::Clock::now();
    if (!cache->filled_ || now - cache->loaded_ >= cache->ttl_ || cache->hostname_ != hostname) {
      cache->parts_ = ReadStaticParts(sys, hostname);
      cache->filled_ = true;
      cache->loaded_ = now;
      cache->hostname_ = hostname;
      cache->utmp_path_.clear();
      for (const char* path : {"/run/utmp", "/var/run/utmp"}) {
        if (::access(sys.Path(path).c_str(), F_OK) == 0) {
          cache->utmp_path_ = sys.Path(path);
          break;
        }
      }
      cache->utmp_key_ = {};
      cache->users_ = "[]";
    } else {
      reload_zone_rules = false;  // tzset ran at the refresh
    }
    parts = &cache->parts_;
    if (!cache->utmp_path_.empty()) {
      // utmp is rewritten at every login and logout, so its stat identity says when to re-read.
      struct stat st {};
      SystemInfoCache::UtmpKey key;
      if (::stat(cache->utmp_path_.c_str(), &st) == 0) {
        key = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
               static_cast<uint64_t>(st.st_size),
               static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
      }
      if (key.mtime_ns < 0 || !(key == cache->utmp_key_)) {
        cache->users_ = UsersText(sys);
        cache->utmp_key_ = key;
      }
    }  // else none at the last refresh; looked for again at the next one
    users = &cache->users_;
    loadavg_text = RereadKernelFile(sys.Path("/proc/loadavg"), cache->loadavg_fd_);
    meminfo_text = RereadKernelFile(sys.Path("/proc/meminfo"), cache->meminfo_fd_);
  } else {
    fresh = ReadStaticParts(sys, hostname);
    fresh_users = UsersText(sys);
    loadavg_text = ReadText(sys, "/proc/loadavg", 4096);
    meminfo_text = ReadText(sys, "/proc/meminfo", 64 * 1024);
  }

  std::optional<int64_t> boot_time;
  std::optional<double> uptime;
  if (live) {
    // What the kernel prints as btime: wall clock minus time since boot, whole seconds.
    timespec real{}, boot{};
    ::clock_gettime(CLOCK_REALTIME, &real);
    ::clock_gettime(CLOCK_BOOTTIME, &boot);
    int64_t diff_ns = (static_cast<int64_t>(real.tv_sec) - boot.tv_sec) * 1000000000 +
                      (static_cast<int64_t>(real.tv_nsec) - boot.tv_nsec);
    boot_time = diff_ns / 1000000000;
    uptime =
        static_cast<double>(boot.tv_sec) + static_cast<double>(boot.tv_nsec / 10000000) / 100.0;
  } else {
    if (auto stat = ReadText(sys, "/proc/stat", 1 << 20)) {
      for (auto line : SplitLines(*stat)) {
        if (line.rfind("btime ", 0) == 0) {
          if (auto v = ParseU64(Trim(line.substr(6)))) boot_time = static_cast<int64_t>(*v);
          break;
        }
      }
    }
    if (auto up = ReadText(sys, "/proc/uptime", 4096)) {
      auto f = SplitFields(Trim(*up));
      if (!f.empty()) uptime = ParseDouble(f[0]);
    }
  }

  // Written as text, member by member: building a DOM of ~80 values and serializing it was
  // ~45K of the ~57K instructions this call took (callgrind).
  out.reserve(out.size() + parts->os.size() + parts->cpu.size() + users->size() + 1024);
  JsonObjectWriter w(out);
  w.Raw("os", parts->os);
  {
    JsonObjectWriter kernel(w.Key("kernel"));
    kernel.String("name", from_proc("/proc/sys/kernel/ostype", uts.sysname));
    kernel.String("release", from_proc("/proc/sys/kernel/osrelease", uts.release));
    kernel.String("version", from_proc("/proc/sys/kernel/version", uts.version));
    kernel.String("machine", uts.machine);
    kernel.Close();
  }
  w.String("hostname", hostname);
  w.Raw("fqdn", parts->fqdn);
  w.Raw("machine_id", parts->machine_id);
  if (boot_time) {
    w.Int("boot_time", *boot_time);
  } else {
    w.Null("boot_time");
  }
  w.OptionalDouble("uptime_seconds", uptime);
  WriteZone(w.Key("timezone"), parts->zone_name, reload_zone_rules);
  w.Raw("cpu", parts->cpu);
  WriteLoad(w.Key("load_average"), loadavg_text);
  WriteMemory(w.Key("memory"), ParseMeminfo(meminfo_text));
  w.Raw("users", *users);
  w.String("agent_version", KVM_AGENT_VERSION);
  w.Close();
}

json::object CollectSystemInfo(const SystemRoot& sys, SystemInfoCache* cache) {
  std::string text;
  AppendSystemInfo(text, sys, cache);
  return ParseObject(text);
}

}  // namespace kvm::sysinfo
