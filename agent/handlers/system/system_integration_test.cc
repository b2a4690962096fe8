// get_system_info, get_network_info, get_disk_usage through the real agent binary, checked
// against independent tools on this machine (uname, hostname, ip -j, df, free, getconf).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "agent/core/file_util.h"
#include "tests/support/agent_process.h"

namespace kvm::test {
namespace {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

std::string Tool(const std::vector<std::string>& argv) {
  RunResult r = RunProgram(argv);
  EXPECT_EQ(r.exit_code, 0) << argv[0] << ": " << r.err;
  return r.out;
}

// gtest compares json::value with json::value only.
json::value J(const std::string& s) { return json::string(s); }

std::string Chomp(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

uint64_t MeminfoKb(const std::string& key) {
  std::string text = ReadFileText("/proc/meminfo");
  size_t pos = text.find("\n" + key + ":");
  if (text.rfind(key + ":", 0) == 0)
    pos = 0;
  else if (pos != std::string::npos)
    pos += 1;
  EXPECT_NE(pos, std::string::npos) << key;
  return std::stoull(text.substr(pos + key.size() + 1));
}

// AgentProcess returns once the socket file exists, a moment before listen(): a first
// connect can be refused on a loaded machine, so connecting is retried briefly.
CallResult CallRetry(const AgentProcess& agent, const std::string& method,
                     const json::object& params = {}) {
  for (int attempt = 0;; ++attempt) {
    try {
      return agent.Call(method, params);
    } catch (const ClientError& e) {
      if (attempt >= 100 || std::string(e.what()).find("refused") == std::string::npos) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

json::object CallOk(const AgentProcess& agent, const std::string& method,
                    const json::object& params = {}) {
  CallResult r = CallRetry(agent, method, params);
  EXPECT_TRUE(r.ok) << method << ": " << r.error_code << " " << r.error_message << " "
                    << json::serialize(r.error_data);
  return r.ok ? r.result.as_object() : json::object{};
}

TEST(SystemInfoLive, MatchesUnameHostnameMeminfoAndOsRelease) {
  AgentProcess agent;
  json::object info = CallOk(agent, "get_system_info");
  EXPECT_EQ(info["kernel"].at("release"), J(Chomp(Tool({"uname", "-r"}))));
  EXPECT_EQ(info["kernel"].at("version"), J(Chomp(Tool({"uname", "-v"}))));
  EXPECT_EQ(info["kernel"].at("machine"), J(Chomp(Tool({"uname", "-m"}))));
  EXPECT_EQ(info["kernel"].at("name"), J(Chomp(Tool({"uname", "-s"}))));
  EXPECT_EQ(info["hostname"], J(Chomp(Tool({"hostname"}))));
  std::string fqdn = Chomp(Tool({"hostname", "-f"}));
  if (fqdn.find('.') != std::string::npos) {
    EXPECT_EQ(info["fqdn"], J(fqdn));
  } else {
    EXPECT_TRUE(info["fqdn"].is_null()) << json::serialize(info["fqdn"]);
  }
  // os-release read by the shell itself.
  auto os_var = [](const char* var) {
    return Chomp(
        Tool({"sh", "-c", std::string(". /etc/os-release; printf '%s' \"$") + var + "\""}));
  };
  EXPECT_EQ(info["os"].at("id"), J(os_var("ID")));
  EXPECT_EQ(info["os"].at("pretty_name"), J(os_var("PRETTY_NAME")));
  EXPECT_EQ(info["os"].at("version_id"), J(os_var("VERSION_ID")));
  EXPECT_EQ(info["machine_id"], J(Chomp(ReadFileText("/etc/machine-id"))));

  const json::object& mem = info["memory"].as_object();
  EXPECT_EQ(mem.at("total_bytes"), MeminfoKb("MemTotal") * 1024);
  EXPECT_EQ(mem.at("swap_total_bytes"), MeminfoKb("SwapTotal") * 1024);
  // free(1) in bytes: "Mem: total used free shared buff/cache available".
  std::string free_out = Tool({"free", "-b"});
  std::istringstream lines(free_out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("Mem:", 0) != 0) continue;
    std::istringstream f(line.substr(4));
    uint64_t total, used, free_b, shared, cache, avail;
    f >> total >> used >> free_b >> shared >> cache >> avail;
    EXPECT_EQ(mem.at("total_bytes"), total);
    // Other engineers' builds move these; they must agree within 5% of memory.
    auto near = [&](const char* key, uint64_t v) {
      double diff =
          std::abs(static_cast<double>(mem.at(key).to_number<uint64_t>()) - static_cast<double>(v));
      EXPECT_LT(diff, total * 0.05) << key << " " << mem.at(key) << " vs free(1) " << v;
    };
    near("available_bytes", avail);
    near("cached_bytes", cache);
    near("used_bytes", used);
  }

  const json::object& cpu = info["cpu"].as_object();
  EXPECT_EQ(cpu.at("online_count"), std::stoull(Tool({"getconf", "_NPROCESSORS_ONLN"})));
  EXPECT_GE(cpu.at("logical_count").to_number<uint64_t>(),
            cpu.at("online_count").to_number<uint64_t>());
  EXPECT_EQ(cpu.at("per_cpu").as_array().size(), cpu.at("online_count").to_number<uint64_t>());
  std::string lscpu_model =
      Chomp(Tool({"sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"}));
  if (!lscpu_model.empty()) {
    EXPECT_EQ(cpu.at("model"), J(lscpu_model));
  }

  // Boot time: procps' uptime -s (local time) converted by date(1).
  int64_t boot = std::stoll(Tool({"date", "-d", Chomp(Tool({"uptime", "-s"})), "+%s"}));
  EXPECT_NEAR(static_cast<double>(info["boot_time"].as_int64()), static_cast<double>(boot), 2.0);
  double up_now = std::stod(ReadFileText("/proc/uptime"));
  EXPECT_NEAR(info["uptime_seconds"].as_double(), up_now, 5.0);
  // UTC offset as date(1) prints it (+hhmm).
  std::string z = Chomp(Tool({"date", "+%z"}));
  std::string ours(info["timezone"].at("utc_offset").as_string());
  EXPECT_EQ(ours.substr(0, 3) + ours.substr(4, 2), z);
  EXPECT_EQ(info["timezone"].at("abbreviation"), J(Chomp(Tool({"date", "+%Z"}))));
  std::error_code ec;
  auto link = std::filesystem::read_symlink("/etc/localtime", ec);
  if (!ec && link.string().find("zoneinfo/") != std::string::npos) {
    std::string l = link.string();
    EXPECT_EQ(info["timezone"].at("name"), J(l.substr(l.find("zoneinfo/") + 9)));
  }
  // Logged-in users: who(1) reads the same utmp through libc.
  std::string who = Tool({"who"});
  size_t who_lines = 0;
  for (char c : who) who_lines += c == '\n';
  EXPECT_EQ(info["users"].as_array().size(), who_lines) << who;
  EXPECT_FALSE(info["agent_version"].as_string().empty());
}

// The timezone is the system's (/etc/localtime), whatever TZ the agent was started with: a
// TZ inherited from a shell must not give the name of one zone with another's offset.
TEST(SystemInfoLive, TimezoneIsTheSystemsEvenWhenTheAgentInheritsTZ) {
  std::string want_abbrev = Chomp(Tool({"date", "+%Z"}));
  std::string want_offset = Chomp(Tool({"date", "+%z"}));
  // A POSIX TZ (no tzdata needed) that cannot be the system's zone.
  ::setenv("TZ", want_abbrev == "KVQ" ? "KVR-9:30" : "KVQ-9:30", 1);
  AgentProcess agent;
  ::unsetenv("TZ");
  json::object tz = CallOk(agent, "get_system_info", {})["timezone"].as_object();
  EXPECT_EQ(tz.at("abbreviation"), J(want_abbrev));
  std::string ours(tz.at("utc_offset").as_string());
  EXPECT_EQ(ours.substr(0, 3) + ours.substr(4, 2), want_offset);
}

TEST(SystemInfoLive, UnknownParamsAreRefused) {
  AgentProcess agent;
  for (const char* m : {"get_system_info", "get_network_info", "get_disk_usage"}) {
    CallResult r = CallRetry(agent, m, {{"bogus", 1}});
    EXPECT_FALSE(r.ok) << m;
    EXPECT_EQ(r.error_code, -32602) << m;
  }
  CallResult r = agent.Call("get_network_info", {{"interface", 5}});
  EXPECT_EQ(r.error_code, -32602);
  r = agent.Call("get_network_info", {{"interface", ""}});
  EXPECT_EQ(r.error_code, -32602);
  r = agent.Call("get_disk_usage", {{"all", "yes"}});
  EXPECT_EQ(r.error_code, -32602);
  r = agent.Call("get_disk_usage", {{"timeout_ms", 0}});
  EXPECT_EQ(r.error_code, -32602);
  r = agent.Call("get_network_info", {{"interface", "no-such-if0"}});
  EXPECT_EQ(r.error_code, -32001);
  EXPECT_EQ(r.error_data.at("interface"), "no-such-if0");
}

std::map<std::string, json::object> ByName(const json::array& a, const char* key) {
  std::map<std::string, json::object> out;
  for (const auto& v : a) out[std::string(v.at(key).as_string())] = v.as_object();
  return out;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

TEST(NetworkInfoLive, MatchesIpJsonAddrRoutesAndStats) {
  AgentProcess agent;
  json::array before = ParseJson(Tool({"ip", "-j", "-s", "link"})).as_array();
  json::object net = CallOk(agent, "get_network_info");
  json::array after = ParseJson(Tool({"ip", "-j", "-s", "link"})).as_array();
  json::array ip_addr = ParseJson(Tool({"ip", "-j", "addr"})).as_array();

  auto ours = ByName(net["interfaces"].as_array(), "name");
  ASSERT_EQ(ours.size(), ip_addr.size());
  for (const auto& v : ip_addr) {
    const json::object& ip = v.as_object();
    std::string name(ip.at("ifname").as_string());
    SCOPED_TRACE(name);
    ASSERT_TRUE(ours.count(name));
    const json::object& o = ours[name];
    EXPECT_EQ(o.at("index"), ip.at("ifindex"));
    EXPECT_EQ(o.at("mtu"), ip.at("mtu"));
    EXPECT_EQ(o.at("operstate"), J(Lower(std::string(ip.at("operstate").as_string()))));
    if (ip.contains("address") &&
        (ip.at("link_type") == "ether" || ip.at("link_type") == "loopback")) {
      EXPECT_EQ(o.at("mac"), ip.at("address"));
    }
    std::set<std::string> our_flags;
    for (const auto& f : o.at("flags").as_array()) our_flags.insert(std::string(f.as_string()));
    for (const auto& f : ip.at("flags").as_array()) {
      std::string flag = Lower(std::string(f.as_string()));
      if (flag == "no-carrier" || flag == "m-down") continue;  // derived, not kernel flags
      EXPECT_TRUE(our_flags.count(flag)) << flag;
    }
    // Addresses: same set of (family, address, prefix, scope).
    std::set<std::string> want, got;
    for (const auto& a : ip.at("addr_info").as_array()) {
      want.insert(std::string(a.at("family") == "inet" ? "ipv4" : "ipv6") + " " +
                  std::string(a.at("local").as_string()) + "/" +
                  std::to_string(a.at("prefixlen").as_int64()) + " " +
                  std::string(a.at("scope").as_string()));
    }
    for (const auto& a : o.at("addresses").as_array()) {
      got.insert(std::string(a.at("family").as_string()) + " " +
                 std::string(a.at("address").as_string()) + "/" +
                 std::to_string(a.at("prefix_length").as_int64()) + " " +
                 std::string(a.at("scope").as_string()));
    }
    EXPECT_EQ(got, want);
  }
  // Counters: between two ip(8) readings taken around the call.
  auto b = ByName(before, "ifname"), a = ByName(after, "ifname");
  for (auto& [name, o] : ours) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(b.count(name) && a.count(name));
    const json::object& s = o.at("stats").as_object();
    for (const char* dir : {"rx", "tx"}) {
      for (const char* k : {"bytes", "packets", "errors", "dropped"}) {
        std::string key = std::string(dir) + "_" + k;
        uint64_t lo = b[name].at("stats64").at(dir).at(k).to_number<uint64_t>();
        uint64_t hi = a[name].at("stats64").at(dir).at(k).to_number<uint64_t>();
        uint64_t v = s.at(key).to_number<uint64_t>();
        EXPECT_LE(lo, v) << key;
        EXPECT_LE(v, hi) << key;
      }
    }
  }
  // Default routes, both families.
  std::set<std::string> want_routes, got_routes;
  for (const char* fam : {"-4", "-6"}) {
    // Keep the parsed value alive for the loop (a temporary's member would dangle).
    json::value routes = ParseJson(Tool({"ip", "-j", fam, "route", "show", "default"}));
    for (const auto& r : routes.as_array()) {
      if (!r.as_object().contains("gateway")) continue;
      want_routes.insert(std::string(fam) + " " + std::string(r.at("gateway").as_string()) + " " +
                         std::string(r.at("dev").as_string()));
    }
  }
  for (const auto& r : net["default_routes"].as_array()) {
    if (r.at("gateway").is_null()) continue;
    got_routes.insert(std::string(r.at("family") == "ipv4" ? "-4" : "-6") + " " +
                      std::string(r.at("gateway").as_string()) + " " +
                      std::string(r.at("interface").as_string()));
  }
  EXPECT_EQ(got_routes, want_routes);
  // DNS: the nameserver lines as awk sees them.
  std::string awk = Tool({"awk", "$1==\"nameserver\"{print $2}", "/etc/resolv.conf"});
  json::array want_dns;
  std::istringstream in(awk);
  for (std::string s; in >> s;) want_dns.emplace_back(s);
  EXPECT_EQ(net["dns"].at("nameservers"), want_dns);
}

TEST(NetworkInfoLive, FilterByNameAndExcludeLoopback) {
  AgentProcess agent;
  json::object lo = CallOk(agent, "get_network_info", {{"interface", "lo"}});
  ASSERT_EQ(lo["interfaces"].as_array().size(), 1u);
  EXPECT_EQ(lo["interfaces"].at(0).at("name"), "lo");
  json::object no_lo = CallOk(agent, "get_network_info", {{"exclude_loopback", true}});
  json::array all = ParseJson(Tool({"ip", "-j", "link"})).as_array();
  EXPECT_EQ(no_lo["interfaces"].as_array().size(), all.size() - 1);
  for (const auto& i : no_lo["interfaces"].as_array()) EXPECT_EQ(i.at("loopback"), false);
}

TEST(SystemCtl, InfoNetDfPrintTablesAndRawJson) {
  AgentProcess agent;
  CallRetry(agent, "ping");
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {KVM_CTL_BINARY, "--socket", agent.socket_path()});
    return RunProgram(args);
  };
  RunResult info = ctl({"info"});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("Hostname:     " + Chomp(Tool({"hostname"}))), std::string::npos)
      << info.out;
  EXPECT_NE(info.out.find(Chomp(Tool({"uname", "-r"}))), std::string::npos);
  RunResult info_json = ctl({"info", "--json"});
  EXPECT_EQ(ParseJson(info_json.out).at("kernel").at("release"), J(Chomp(Tool({"uname", "-r"}))));

  RunResult net = ctl({"net"});
  EXPECT_EQ(net.exit_code, 0) << net.err;
  json::value ip_addr = ParseJson(Tool({"ip", "-j", "addr"}));
  for (const auto& i : ip_addr.as_array()) {
    EXPECT_NE(net.out.find(std::string(i.at("ifname").as_string())), std::string::npos);
    for (const auto& a : i.at("addr_info").as_array()) {
      std::string cidr = std::string(a.at("local").as_string()) + "/" +
                         std::to_string(a.at("prefixlen").as_int64());
      EXPECT_NE(net.out.find(cidr), std::string::npos) << cidr << "\n" << net.out;
    }
  }
  RunResult net_lo = ctl({"--json", "net", "-i", "lo"});
  EXPECT_EQ(ParseJson(net_lo.out).at("interfaces").as_array().size(), 1u);
  RunResult missing = ctl({"net", "-i", "no-such-if0"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("not_found"), std::string::npos);
  RunResult empty = ctl({"net", "-i", ""});  // a refusal, not every interface
  EXPECT_EQ(empty.exit_code, 1) << empty.out;
  EXPECT_NE(empty.err.find("interface"), std::string::npos) << empty.err;

  RunResult df = ctl({"df"});
  EXPECT_EQ(df.exit_code, 0) << df.err;
  EXPECT_EQ(df.out.rfind("FILESYSTEM", 0), 0u) << df.out;
  RunResult df_json = ctl({"df", "--json"});
  json::value parsed = ParseJson(df_json.out);
  bool has_root = false;
  for (const auto& f : parsed.at("filesystems").as_array()) {
    has_root = has_root || f.at("mount_point") == "/";
    EXPECT_NE(df.out.find(std::string(f.at("mount_point").as_string())), std::string::npos);
  }
  EXPECT_TRUE(has_root);
  RunResult df_all = ctl({"df", "-a"});
  EXPECT_NE(df_all.out.find(" /proc"), std::string::npos);
  EXPECT_EQ(ctl({"df", "--mount-timeout-ms", "0"}).exit_code, 2);
}

// One row of `df -B1 --output=size,used,avail,itotal,iused,iavail,fstype,target PATH`.
struct DfRow {
  uint64_t size, used, avail, itotal, iused, iavail;
  std::string fstype, target;
};
std::optional<DfRow> Df(const std::string& path) {
  RunResult r =
      RunProgram({"df", "-B1", "--output=size,used,avail,itotal,iused,iavail,fstype,target", path});
  if (r.exit_code != 0) return std::nullopt;
  std::string row = r.out.substr(r.out.find('\n') + 1);
  std::istringstream f(row);
  DfRow d;
  f >> d.size >> d.used >> d.avail >> d.itotal >> d.iused >> d.iavail >> d.fstype;
  std::getline(f >> std::ws, d.target);
  return d;
}

TEST(DiskUsageLive, MatchesDfForEveryRealFilesystem) {
  AgentProcess agent;
  // Every filesystem df lists by default (it drops dummy ones) and we do not call pseudo.
  std::string listing = Tool({"df", "-B1", "--output=fstype,target"});
  json::object before_call = CallOk(agent, "get_disk_usage");
  auto ours = ByName(before_call["filesystems"].as_array(), "mount_point");
  std::istringstream lines(listing);
  std::string line;
  std::getline(lines, line);
  size_t checked = 0;
  while (std::getline(lines, line)) {
    std::istringstream f(line);
    std::string fstype, target;
    f >> fstype;
    std::getline(f >> std::ws, target);
    if (fstype == "tmpfs" || fstype == "devtmpfs" || fstype == "overlay") continue;
    SCOPED_TRACE(target);
    ASSERT_TRUE(ours.count(target)) << json::serialize(before_call);
    auto df1 = Df(target);
    json::object call = CallOk(agent, "get_disk_usage");
    auto df2 = Df(target);
    ASSERT_TRUE(df1 && df2);
    const json::object* fs = nullptr;
    for (const auto& v : call["filesystems"].as_array()) {
      if (v.at("mount_point").as_string() == target) fs = &v.as_object();
    }
    ASSERT_TRUE(fs);
    EXPECT_EQ(fs->at("fstype"), J(df1->fstype));
    EXPECT_EQ(fs->at("total_bytes"), df1->size);
    EXPECT_EQ(fs->at("total_inodes"), df1->itotal);
    // Shared machine: usage moves; ours must sit between two df runs (+- 16 MiB, 64 inodes).
    auto between = [](uint64_t v, uint64_t a, uint64_t b, uint64_t slack, const char* what) {
      EXPECT_GE(v + slack, std::min(a, b)) << what;
      EXPECT_LE(v, std::max(a, b) + slack) << what;
    };
    between(fs->at("used_bytes").to_number<uint64_t>(), df1->used, df2->used, 16 << 20, "used");
    between(fs->at("available_bytes").to_number<uint64_t>(), df1->avail, df2->avail, 16 << 20,
            "avail");
    between(fs->at("used_inodes").to_number<uint64_t>(), df1->iused, df2->iused, 64, "iused");
    between(fs->at("free_inodes").to_number<uint64_t>(), df1->iavail, df2->iavail, 64, "iavail");
    ++checked;
  }
  EXPECT_GT(checked, 0u);
  // Pseudo filesystems only with "all".
  for (const auto& [mp, fs] : ours) EXPECT_NE(fs.at("fstype"), "proc") << mp;
  json::object all = CallOk(agent, "get_disk_usage", {{"all", true}});
  auto everything = ByName(all["filesystems"].as_array(), "mount_point");
  ASSERT_TRUE(everything.count("/proc"));
  EXPECT_EQ(everything["/proc"].at("fstype"), "proc");
  EXPECT_GT(everything.size(), ours.size());
}

TEST(DiskUsageLive, RootFilesystemDiskMatchesLsblk) {
  AgentProcess agent;
  json::object r = CallOk(agent, "get_disk_usage");
  auto fs = ByName(r["filesystems"].as_array(), "mount_point");
  ASSERT_TRUE(fs.count("/"));
  const json::array& disks = fs["/"].at("disks").as_array();
  // lsblk's PKNAME/NAME of the root device, its SIZE in bytes and SERIAL.
  std::string src = Chomp(Tool({"findmnt", "-n", "-o", "SOURCE", "/"}));
  if (src.rfind("/dev/", 0) != 0) GTEST_SKIP() << "root is not on a block device: " << src;
  json::value lsblk =
      ParseJson(Tool({"lsblk", "-J", "-b", "-s", "-o", "NAME,TYPE,SIZE,SERIAL", src}));
  // -s lists the inverse tree: the root device first, its disks as children.
  std::set<std::string> want;
  std::function<void(const json::value&)> walk = [&](const json::value& n) {
    if (n.at("type") == "disk") want.insert(std::string(n.at("name").as_string()));
    if (n.as_object().contains("children")) {
      for (const auto& c : n.at("children").as_array()) walk(c);
    }
  };
  for (const auto& d : lsblk.at("blockdevices").as_array()) walk(d);
  std::set<std::string> got;
  for (const auto& d : disks) got.insert(std::string(d.at("name").as_string()));
  EXPECT_EQ(got, want) << json::serialize(disks);
  for (const auto& d : disks) {
    std::string name(d.at("name").as_string());
    json::value one =
        ParseJson(Tool({"lsblk", "-J", "-b", "-d", "-o", "NAME,SIZE,SERIAL", "/dev/" + name}));
    const json::object& row = one.at("blockdevices").at(0).as_object();
    EXPECT_EQ(d.at("size_bytes"), row.at("size").to_number<uint64_t>());
    if (!row.at("serial").is_null()) {
      EXPECT_EQ(d.at("serial"), row.at("serial"));
    }
  }
}

// Mounts a private tmpfs world: a path with blanks, tab and backslash, a bind mount of a
// subdirectory, and a FUSE mount whose server never answers (the kernel's statfs blocks:
// a dead NFS server in miniature). Private mount namespace: invisible to everyone else.
class PrivateMounts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount";
    ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << std::strerror(errno);
    ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
    base = base_dir.path();
    odd = base + "/dir with space\tand\\back";
    std::filesystem::create_directories(odd);
    ASSERT_EQ(::mount("kvmtest src", odd.c_str(), "tmpfs", 0, "size=8m,nr_inodes=1000"), 0)
        << std::strerror(errno);
    mounted.push_back(odd);
    std::filesystem::create_directories(odd + "/sub");
    bind = base + "/bind";
    std::filesystem::create_directories(bind);
    ASSERT_EQ(::mount((odd + "/sub").c_str(), bind.c_str(), nullptr, MS_BIND, nullptr), 0);
    mounted.push_back(bind);
  }
  bool MountHungFuse() {
    fuse_fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse_fd < 0) return false;
    hung = base + "/hung";
    std::filesystem::create_directories(hung);
    std::string opts = "fd=" + std::to_string(fuse_fd) + ",rootmode=40000,user_id=0,group_id=0";
    if (::mount("deadserver", hung.c_str(), "fuse", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
      return false;
    }
    mounted.push_back(hung);
    return true;
  }
  void TearDown() override {
    if (agent) agent.reset();  // SIGKILL ends its stuck helper thread too
    // Detach first: nothing may touch the FUSE mount (it would block) before the server dies.
    for (auto it = mounted.rbegin(); it != mounted.rend(); ++it) ::umount2(it->c_str(), MNT_DETACH);
    if (fuse_fd >= 0) ::close(fuse_fd);
  }

  TempDir base_dir;
  std::string base, odd, bind, hung;
  std::vector<std::string> mounted;
  int fuse_fd = -1;
  std::unique_ptr<AgentProcess> agent;
};

TEST_F(PrivateMounts, EscapedPathsBindMountsAndAHungMountThroughTheAgent) {
  bool have_fuse = MountHungFuse();
  agent = std::make_unique<AgentProcess>();  // started inside this mount namespace
  auto start = Clock::now();
  json::object r = CallOk(*agent, "get_disk_usage", {{"all", true}, {"timeout_ms", 300}});
  auto took = Clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(3));
  auto fs = ByName(r["filesystems"].as_array(), "mount_point");
  ASSERT_TRUE(fs.count(odd)) << json::serialize(r);
  const json::object& o = fs[odd];
  EXPECT_EQ(o.at("source"), "kvmtest src");
  EXPECT_EQ(o.at("fstype"), "tmpfs");
  EXPECT_EQ(o.at("total_bytes"), 8u << 20);
  EXPECT_EQ(o.at("total_inodes"), 1000u);
  auto df = Df(odd);  // df prints the tab as '?': its numbers only
  ASSERT_TRUE(df);
  EXPECT_EQ(o.at("total_bytes"), df->size);
  EXPECT_EQ(o.at("used_inodes"), df->iused);
  // findmnt (util-linux) escapes the path in its JSON: the same string must come back.
  json::value fm =
      ParseJson(Tool({"findmnt", "-J", "-b", "-o", "TARGET,SOURCE,FSTYPE,FSROOT,SIZE", "--", odd}));
  const json::value& row = fm.at("filesystems").at(0);
  EXPECT_EQ(o.at("mount_point"), row.at("target"));
  EXPECT_EQ(o.at("source"), row.at("source"));
  EXPECT_EQ(o.at("total_bytes").to_number<uint64_t>(), row.at("size").to_number<uint64_t>());
  json::value fb = ParseJson(Tool({"findmnt", "-J", "-o", "TARGET,FSROOT", "--", bind}));
  EXPECT_EQ(fs[bind].at("fs_root"), fb.at("filesystems").at(0).at("fsroot"));
  ASSERT_TRUE(fs.count(bind));
  EXPECT_EQ(fs[bind].at("bind"), true);
  EXPECT_EQ(fs[bind].at("fs_root"), "/sub");
  EXPECT_EQ(fs[bind].at("total_bytes"), o.at("total_bytes"));
  if (!have_fuse) GTEST_SKIP() << "no FUSE here: hung-mount part not run";
  ASSERT_TRUE(fs.count(hung));
  EXPECT_EQ(fs[hung].at("available"), false);
  EXPECT_TRUE(fs[hung].at("total_bytes").is_null());
  EXPECT_NE(std::string(fs[hung].at("error").as_string()).find("300 ms"), std::string::npos);
  // Not in the default view either way: FUSE is a real filesystem type, so it is listed.
  json::object again = CallOk(*agent, "get_disk_usage", {{"timeout_ms", 300}});
  auto fs2 = ByName(again["filesystems"].as_array(), "mount_point");
  ASSERT_TRUE(fs2.count(hung));
  EXPECT_NE(std::string(fs2[hung].at("error").as_string()).find("earlier"), std::string::npos);
  // The agent still serves everything else.
  EXPECT_TRUE(agent->Call("get_system_info").ok);
}

}  // namespace
}  // namespace kvm::test
