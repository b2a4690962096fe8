// info, net, df: readable tables of get_system_info, get_network_info, get_disk_usage
// (--json prints the raw result).
#include <boost/json.hpp>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "ctl/ctl.h"
#include "ctl/json_print.h"
#include "ctl/terminal_text.h"

namespace kvm::ctl {
namespace json = boost::json;
namespace {

// Every string the tables show comes from the guest: shown without its control characters.
std::string Str(const json::value& v) {
  if (v.is_string()) return ForTerminal(v.get_string());
  if (v.is_null()) return "-";
  return CompactJson(v);
}

const json::value& At(const json::value& v, std::string_view key) {
  static const json::value null;
  if (!v.is_object()) return null;
  auto it = v.get_object().find(key);
  return it == v.get_object().end() ? null : it->value();
}

// The reply's shape is the agent's promise: a broken promise is a malformed reply (exit 3).
const json::array& Array(const json::value& v, std::string_view what) {
  if (!v.is_array()) ThrowMalformed(std::string(what) + " should be an array but is", v);
  return v.get_array();
}

double Number(const json::value& v, std::string_view what) {
  if (!v.is_number()) ThrowMalformed(std::string(what) + " should be a number but is", v);
  return v.to_number<double>();
}

std::string HumanBytes(const json::value& v) {
  if (!v.is_number()) return "-";
  double b = v.to_number<double>();
  const char* units[] = {"B", "K", "M", "G", "T", "P"};
  int u = 0;
  while (b >= 1024 && u < 5) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : (b < 10 ? "%.1f%s" : "%.0f%s"), b, units[u]);
  return buf;
}

std::string FormatTime(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  ::localtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &tm);
  return buf;
}

std::string Duration(double seconds) {
  auto s = static_cast<int64_t>(seconds);
  char buf[64];
  if (s >= 86400) {
    std::snprintf(buf, sizeof buf, "%lldd %lldh %lldm", (long long)(s / 86400),
                  (long long)(s % 86400 / 3600), (long long)(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldh %lldm %llds", (long long)(s / 3600),
                  (long long)(s % 3600 / 60), (long long)(s % 60));
  }
  return buf;
}

// Left-aligned columns sized to their widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print() const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      for (size_t i = 0; i < r.size(); ++i) {
        if (width.size() <= i) width.push_back(0);
        width[i] = std::max(width[i], r[i].size());
      }
    }
    for (const auto& r : rows_) {
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
      }
      std::printf("%s\n", line.c_str());
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

void PrintInfo(const json::value& r) {
  auto row = [](const char* k, const std::string& v) { std::printf("%-13s %s\n", k, v.c_str()); };
  const auto& os = At(r, "os");
  const auto& k = At(r, "kernel");
  std::string host = Str(At(r, "hostname"));
  if (At(r, "fqdn").is_string()) host += " (" + Str(At(r, "fqdn")) + ")";
  row("Hostname:", host);
  row("OS:", Str(At(os, "pretty_name")) + "  [id " + Str(At(os, "id")) + ", version " +
                 Str(At(os, "version_id")) + "]");
  row("Kernel:", Str(At(k, "name")) + " " + Str(At(k, "release")) + " " + Str(At(k, "machine")));
  row("Machine ID:", Str(At(r, "machine_id")));
  if (At(r, "boot_time").is_int64()) {
    std::string up = At(r, "uptime_seconds").is_number()
                         ? " (up " + Duration(At(r, "uptime_seconds").to_number<double>()) + ")"
                         : "";
    row("Booted:", FormatTime(At(r, "boot_time").as_int64()) + up);
  }
  const auto& tz = At(r, "timezone");
  row("Timezone:", Str(At(tz, "name")) + " (" + Str(At(tz, "abbreviation")) + ", UTC" +
                       Str(At(tz, "utc_offset")) + ")");
  const auto& cpu = At(r, "cpu");
  std::string mhz;
  if (At(cpu, "per_cpu").is_array() && !At(cpu, "per_cpu").get_array().empty()) {
    const auto& m = At(At(cpu, "per_cpu").get_array()[0], "mhz");
    if (m.is_number()) {
      char b[32];
      std::snprintf(b, sizeof b, ", %.0f MHz", m.to_number<double>());
      mhz = b;
    }
  }
  row("CPU:", Str(At(cpu, "model")) + " (" + Str(At(cpu, "vendor")) + "), " +
                  Str(At(cpu, "online_count")) + " online of " + Str(At(cpu, "logical_count")) +
                  mhz);
  const auto& la = At(r, "load_average");
  char load[96];
  std::snprintf(load, sizeof load, "%.2f %.2f %.2f",
                At(la, "1m").is_number() ? At(la, "1m").to_number<double>() : 0.0,
                At(la, "5m").is_number() ? At(la, "5m").to_number<double>() : 0.0,
                At(la, "15m").is_number() ? At(la, "15m").to_number<double>() : 0.0);
  row("Load:", load);
  const auto& m = At(r, "memory");
  row("Memory:", HumanBytes(At(m, "used_bytes")) + " used, " +
                     HumanBytes(At(m, "available_bytes")) + " available of " +
                     HumanBytes(At(m, "total_bytes")) + " (buff/cache " +
                     HumanBytes(At(m, "cached_bytes")) + ")");
  row("Swap:",
      HumanBytes(At(m, "swap_free_bytes")) + " free of " + HumanBytes(At(m, "swap_total_bytes")));
  const auto& users = At(r, "users");
  if (!users.is_array() || users.get_array().empty()) {
    row("Users:", "none logged in");
  } else {
    bool first = true;
    for (const auto& u : users.get_array()) {
      std::string line = Str(At(u, "name")) + " on " + Str(At(u, "tty"));
      if (At(u, "host").is_string()) line += " from " + Str(At(u, "host"));
      if (At(u, "login_time").is_int64())
        line += " since " + FormatTime(At(u, "login_time").as_int64());
      row(first ? "Users:" : "", line);
      first = false;
    }
  }
  row("Agent:", Str(At(r, "agent_version")));
}

void PrintNet(const json::value& r) {
  Table t({"INTERFACE", "STATE", "MAC", "MTU", "ADDRESSES", "RX", "TX"});
  for (const auto& i : Array(At(r, "interfaces"), "interfaces")) {
    std::vector<std::string> addrs;
    for (const auto& a : Array(At(i, "addresses"), "an interface's addresses")) {
      addrs.push_back(Str(At(a, "address")) + "/" + Str(At(a, "prefix_length")));
    }
    const auto& s = At(i, "stats");
    std::vector<std::string> row{Str(At(i, "name")),
                                 Str(At(i, "operstate")),
                                 Str(At(i, "mac")),
                                 Str(At(i, "mtu")),
                                 addrs.empty() ? "-" : addrs[0],
                                 HumanBytes(At(s, "rx_bytes")),
                                 HumanBytes(At(s, "tx_bytes"))};
    t.Add(row);
    for (size_t k = 1; k < addrs.size(); ++k) t.Add({"", "", "", "", addrs[k], "", ""});
  }
  t.Print();
  const auto& routes = At(r, "default_routes");
  if (routes.is_array() && !routes.get_array().empty()) {
    std::printf("\nDefault routes:\n");
    for (const auto& d : routes.get_array()) {
      std::printf("  %s via %s dev %s metric %s\n", Str(At(d, "family")).c_str(),
                  Str(At(d, "gateway")).c_str(), Str(At(d, "interface")).c_str(),
                  Str(At(d, "metric")).c_str());
    }
  }
  const auto& dns = At(r, "dns");
  std::string servers, search;
  for (const auto& s : Array(At(dns, "nameservers"), "dns.nameservers")) servers += " " + Str(s);
  for (const auto& s : Array(At(dns, "search"), "dns.search")) search += " " + Str(s);
  std::printf("\nDNS servers:%s\n", servers.empty() ? " none" : servers.c_str());
  if (At(dns, "upstream_nameservers").is_array()) {
    std::string up;
    for (const auto& s : At(dns, "upstream_nameservers").get_array()) up += " " + Str(s);
    std::printf("Upstream (systemd-resolved):%s\n", up.empty() ? " none" : up.c_str());
  }
  if (!search.empty()) std::printf("Search:%s\n", search.c_str());
}

void PrintDf(const json::value& r) {
  Table t({"FILESYSTEM", "TYPE", "SIZE", "USED", "AVAIL", "USE%", "MOUNTED ON", "DISK"});
  for (const auto& f : Array(At(r, "filesystems"), "filesystems")) {
    std::string use = "-";
    if (At(f, "available").is_bool() && At(f, "available").get_bool()) {
      double used = Number(At(f, "used_bytes"), "a filesystem's used_bytes");
      double avail = Number(At(f, "available_bytes"), "a filesystem's available_bytes");
      if (used + avail > 0)
        use = std::to_string(static_cast<int>((used * 100 + used + avail - 1) / (used + avail))) +
              "%";
    }
    std::string disks;
    for (const auto& d : Array(At(f, "disks"), "a filesystem's disks")) {
      if (!disks.empty()) disks += ",";
      disks += Str(At(d, "name")) + "(" + Str(At(d, "bus"));
      if (At(d, "pci_address").is_string()) disks += " " + Str(At(d, "pci_address"));
      disks += ")";
    }
    std::string mp = Str(At(f, "mount_point"));
    if (At(f, "read_only").is_bool() && At(f, "read_only").get_bool()) mp += " (ro)";
    if (At(f, "available").is_bool() && !At(f, "available").get_bool()) {
      mp += "  [unavailable: " + Str(At(f, "error")) + "]";
    }
    t.Add({Str(At(f, "source")), Str(At(f, "fstype")), HumanBytes(At(f, "total_bytes")),
           HumanBytes(At(f, "used_bytes")), HumanBytes(At(f, "available_bytes")), use, mp,
           disks.empty() ? "-" : disks});
  }
  t.Print();
}

}  // namespace

void AddSystemCommands(CLI::App& app, Options& options) {
  auto* info =
      app.add_subcommand("info", "OS, kernel, CPU, memory, uptime, users (get_system_info)");
  info->add_flag("--json", options.json, "print the raw JSON result");
  info->callback(
      [&options] { CallAndShow(options, "get_system_info", {}, PrintInfo, ResultShape::kObject); });

  auto* net = app.add_subcommand("net", "interfaces, addresses, routes, DNS (get_network_info)");
  auto iface = std::make_shared<std::string>();
  auto no_lo = std::make_shared<bool>(false);
  auto* iface_option = net->add_option("-i,--interface", *iface, "only this interface");
  net->add_flag("--no-loopback", *no_lo, "leave out loopback interfaces");
  net->add_flag("--json", options.json, "print the raw JSON result");
  net->callback([&options, iface, iface_option, no_lo] {
    json::object params;
    // Given means sent, also empty: the agent names what is wrong with it.
    if (iface_option->count() > 0) params["interface"] = *iface;
    if (*no_lo) params["exclude_loopback"] = true;
    CallAndShow(options, "get_network_info", params, PrintNet, ResultShape::kObject);
  });

  auto* df = app.add_subcommand("df", "mounted filesystems, usage and disks (get_disk_usage)");
  auto all = std::make_shared<bool>(false);
  auto timeout_ms = std::make_shared<int>(0);
  df->add_flag("-a,--all", *all, "include pseudo filesystems (proc, tmpfs, cgroup...)");
  df->add_option("--mount-timeout-ms", *timeout_ms, "per-mount statvfs bound (default 2000)")
      ->check(CLI::Range(1, 20000));
  df->add_flag("--json", options.json, "print the raw JSON result");
  df->callback([&options, all, timeout_ms] {
    json::object params;
    if (*all) params["all"] = true;
    if (*timeout_ms > 0) params["timeout_ms"] = *timeout_ms;
    CallAndShow(options, "get_disk_usage", params, PrintDf, ResultShape::kObject);
  });
}

}  // namespace kvm::ctl
