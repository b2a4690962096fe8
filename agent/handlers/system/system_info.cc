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

json::object MemoryInfo(const SystemRoot& sys, const std::optional<std::string>* meminfo,
                        json::storage_ptr sp) {
  // Only the keys used below are parsed, in one pass that looks at each line's key and nothing
  // else (meminfo has ~50 lines and this runs on every call; splitting and trimming every line
  // was most of this function's time).
  static constexpr std::string_view kKeys[] = {"MemTotal", "MemFree",      "Buffers",
                                               "Cached",   "SReclaimable", "MemAvailable",
                                               "Shmem",    "SwapTotal",    "SwapFree"};
  enum { kTotal, kFree, kBuffers, kCached, kReclaim, kAvailable, kShmem, kSwapTotal, kSwapFree };
  std::optional<uint64_t> bytes[std::size(kKeys)];
  std::optional<std::string> read;
  if (!meminfo) read = ReadText(sys, "/proc/meminfo", 64 * 1024);
  const std::optional<std::string>& text = meminfo ? *meminfo : read;
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
  auto val = [](std::optional<uint64_t> v) { return v ? json::value(*v) : json::value(nullptr); };
  auto total = bytes[kTotal], free = bytes[kFree], buffers = bytes[kBuffers];
  auto cached = bytes[kCached], reclaim = bytes[kReclaim];
  // buff/cache as free(1) counts it: page cache plus reclaimable slab.
  std::optional<uint64_t> cache;
  if (cached) cache = *cached + reclaim.value_or(0);
  auto available = bytes[kAvailable];
  if (!available && free) available = *free + buffers.value_or(0) + cache.value_or(0);  // < 3.14
  std::optional<uint64_t> used;
  if (total && free) {
    uint64_t not_used = *free + buffers.value_or(0) + cache.value_or(0);
    used = *total > not_used ? *total - not_used : 0;
  }
  return json::object(
      {
          {"total_bytes", val(total)},
          {"available_bytes", val(available)},
          {"free_bytes", val(free)},
          {"used_bytes", val(used)},
          {"buffers_bytes", val(buffers)},
          {"cached_bytes", val(cache)},
          {"shared_bytes", val(bytes[kShmem])},
          {"swap_total_bytes", val(bytes[kSwapTotal])},
          {"swap_free_bytes", val(bytes[kSwapFree])},
      },
      std::move(sp));
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

json::object TimezoneInfo(const SystemRoot& sys, bool reload_rules, const json::value* known_name,
                          json::storage_ptr sp) {
  std::optional<std::string> name;
  if (known_name) {
    if (known_name->is_string()) name = std::string(known_name->get_string());
  } else {
    // The zone name is the path below zoneinfo/ that /etc/localtime links to (systemd's rule),
    // else Debian's /etc/timezone.
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
    if (!name) {
      if (auto tz = ReadAttr(sys, "/etc/timezone"); tz && !tz->empty()) name = *tz;
    }
  }
  // The offset comes from libc's reading of the live /etc/localtime (TZif parsing is not NSS).
  // tzset() re-reads that file; localtime_r alone keeps the rules already loaded (and still
  // follows their DST transitions).
  if (reload_rules) ::tzset();
  time_t now = std::time(nullptr);
  struct tm tm {};
  ::localtime_r(&now, &tm);
  long off = tm.tm_gmtoff;
  char text[40];
  std::snprintf(text, sizeof text, "%c%02ld:%02ld", off < 0 ? '-' : '+', std::labs(off) / 3600,
                (std::labs(off) % 3600) / 60);
  return json::object(
      {
          {"name", StrOrNull(name)},
          {"abbreviation",
           tm.tm_zone ? json::value(ToValidUtf8(tm.tm_zone)) : json::value(nullptr)},
          {"utc_offset_seconds", static_cast<int64_t>(off)},
          {"utc_offset", text},
          {"dst", tm.tm_isdst > 0},
      },
      std::move(sp));
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

json::object CollectSystemInfo(const SystemRoot& sys, SystemInfoCache* cache) {
  // The live system answers from syscalls where /proc would cost an open/read/close each
  // (uname, clocks); a fixture root is read from its files.
  const bool live = sys.root.empty();
  // The reply's ~80 values and strings come from one arena that lives as long as the reply:
  // one allocation instead of one per value (under TCG, malloc and free were a large share of
  // this call's time). Parts copied from the cache are copied into it too.
  json::storage_ptr sp = json::make_shared_resource<json::monotonic_resource>(8192);
  utsname uts{};
  ::uname(&uts);
  auto from_proc = [&](const char* path, const char* fallback) {
    if (live) return ToValidUtf8(fallback);
    auto v = ReadAttr(sys, path);
    return ToValidUtf8(v && !v->empty() ? *v : std::string(fallback));
  };
  std::string hostname = from_proc("/proc/sys/kernel/hostname", uts.nodename);
  // Slow-changing parts: from the cache while it is fresh and still describes this system.
  json::value os(sp), machine_id(sp), fqdn(sp), cpu(sp), zone_name(sp), users(sp);
  std::unique_lock<std::mutex> cache_lock;
  bool refresh = true;
  if (cache) {
    cache_lock = std::unique_lock(cache->mu_);
    refresh = !cache->filled_ || SystemInfoCache::Clock::now() - cache->loaded_ >= cache->ttl_ ||
              cache->hostname_ != hostname;
  }
  if (refresh) {
    os = OsInfo(sys);
    std::optional<std::string> id = ReadAttr(sys, "/etc/machine-id");
    if (!id || id->empty()) id = ReadAttr(sys, "/var/lib/dbus/machine-id");
    machine_id = StrOrNull(id);
    fqdn = FindFqdn(sys, hostname);
    cpu = CpuInfo(sys);
    json::object tz = TimezoneInfo(sys, true);
    zone_name = tz["name"];
    if (cache) {
      cache->filled_ = true;
      cache->loaded_ = SystemInfoCache::Clock::now();
      cache->hostname_ = hostname;
      cache->os_ = os;
      cache->machine_id_ = machine_id;
      cache->fqdn_ = fqdn;
      cache->cpu_ = cpu;
      cache->zone_name_ = zone_name;
      cache->utmp_path_.clear();
      for (const char* path : {"/run/utmp", "/var/run/utmp"}) {
        if (::access(sys.Path(path).c_str(), F_OK) == 0) {
          cache->utmp_path_ = sys.Path(path);
          break;
        }
      }
      cache->utmp_key_ = {};
    }
  } else {
    os = cache->os_;
    machine_id = cache->machine_id_;
    fqdn = cache->fqdn_;
    cpu = cache->cpu_;
    zone_name = cache->zone_name_;
  }
  if (!cache) {
    users = LoggedInUsers(sys);
  } else if (cache->utmp_path_.empty()) {
    users = json::array();  // none at the last refresh; looked for again at the next one
  } else {
    // utmp is rewritten at every login and logout, so its stat identity says when to re-read.
    struct stat st {};
    SystemInfoCache::UtmpKey key;
    if (::stat(cache->utmp_path_.c_str(), &st) == 0) {
      key = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
             static_cast<uint64_t>(st.st_size),
             static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
    }
    if (key.mtime_ns < 0 || !(key == cache->utmp_key_)) {
      cache->users_ = LoggedInUsers(sys);
      cache->utmp_key_ = key;
    }
    users = cache->users_;
  }
  std::optional<std::string> loadavg_text, meminfo_text;
  if (cache) {
    loadavg_text = RereadKernelFile(sys.Path("/proc/loadavg"), cache->loadavg_fd_);
    meminfo_text = RereadKernelFile(sys.Path("/proc/meminfo"), cache->meminfo_fd_);
  } else {
    loadavg_text = ReadText(sys, "/proc/loadavg", 4096);
    meminfo_text = ReadText(sys, "/proc/meminfo", 64 * 1024);
  }
  if (cache_lock) cache_lock.unlock();

  json::value boot_time = nullptr, uptime = nullptr;
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
      if (!f.empty()) {
        if (auto v = ParseDouble(f[0])) uptime = *v;
      }
    }
  }
  json::object load({{"1m", nullptr},
                     {"5m", nullptr},
                     {"15m", nullptr},
                     {"running_tasks", nullptr},
                     {"total_tasks", nullptr}},
                    sp);
  if (const auto& la = loadavg_text) {
    auto f = SplitFields(Trim(*la));
    const char* keys[] = {"1m", "5m", "15m"};
    for (size_t i = 0; i < 3 && i < f.size(); ++i) {
      if (auto v = ParseDouble(f[i])) load[keys[i]] = *v;
    }
    if (f.size() > 3) {
      size_t slash = f[3].find('/');
      if (slash != std::string_view::npos) {
        if (auto r = ParseU64(f[3].substr(0, slash))) load["running_tasks"] = *r;
        if (auto t = ParseU64(f[3].substr(slash + 1))) load["total_tasks"] = *t;
      }
    }
  }
  json::object kernel({{"name", ToValidUtf8(from_proc("/proc/sys/kernel/ostype", uts.sysname))},
                       {"release", from_proc("/proc/sys/kernel/osrelease", uts.release)},
                       {"version", from_proc("/proc/sys/kernel/version", uts.version)},
                       {"machine", ToValidUtf8(uts.machine)}},
                      sp);
  return json::object(
      {
          {"os", std::move(os)},
          {"kernel", std::move(kernel)},
          {"hostname", hostname},
          {"fqdn", std::move(fqdn)},
          {"machine_id", std::move(machine_id)},
          {"boot_time", boot_time},
          {"uptime_seconds", uptime},
          {"timezone", TimezoneInfo(sys, false, &zone_name, sp)},  // rules loaded at the refresh
          {"cpu", std::move(cpu)},
          {"load_average", std::move(load)},
          {"memory", MemoryInfo(sys, &meminfo_text, sp)},
          {"users", std::move(users)},
          {"agent_version", KVM_AGENT_VERSION},
      },
      sp);
}

}  // namespace kvm::sysinfo
