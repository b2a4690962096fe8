#include "agent/handlers/system/system_info.h"

#include <gtest/gtest.h>
#include <utmp.h>

#include <boost/json.hpp>
#include <cstring>

#include "agent/handlers/system/fixture_test_util.h"
#include "version.h"

namespace kvm::sysinfo {
namespace {
namespace json = boost::json;
using testing::Link;
using testing::Put;

class SystemInfoFixture : public ::testing::Test {
 protected:
  kvm::test::TempDir dir;
  std::string root = dir / "root";
  SystemRoot sys{root};
};

TEST_F(SystemInfoFixture, OsReleaseValuesAreUnquotedShellStyle) {
  Put(root, "/etc/os-release",
      "# comment\n"
      "NAME=\"Debian GNU/Linux\"\n"
      "ID=debian\n"
      "VERSION_ID='12'\n"
      "VERSION=\"12 (bookworm)\"\n"
      "PRETTY_NAME=\"A \\\"quoted\\\" name \\$x\"\n"
      "VERSION_CODENAME=bookworm # trailing comment\n"
      "ID_LIKE=\"rhel fedora\"\n");
  json::object os = OsInfo(sys);
  EXPECT_EQ(os["id"], "debian");
  EXPECT_EQ(os["name"], "Debian GNU/Linux");
  EXPECT_EQ(os["version_id"], "12");
  EXPECT_EQ(os["version"], "12 (bookworm)");
  EXPECT_EQ(os["pretty_name"], "A \"quoted\" name $x");
  EXPECT_EQ(os["version_codename"], "bookworm");
  EXPECT_EQ(os["id_like"], "rhel fedora");
  EXPECT_TRUE(os["variant"].is_null());
  EXPECT_EQ(os["source"], "/etc/os-release");
}

TEST_F(SystemInfoFixture, UsrLibOsReleaseIsUsedWhenEtcHasNone) {
  Put(root, "/usr/lib/os-release", "ID=fedora\nNAME=Fedora Linux\nVERSION_ID=40\n");
  json::object os = OsInfo(sys);
  EXPECT_EQ(os["id"], "fedora");
  EXPECT_EQ(os["name"], "Fedora");  // an unquoted blank ends a shell word
  EXPECT_EQ(os["pretty_name"], "Fedora 40");
  EXPECT_EQ(os["source"], "/usr/lib/os-release");
}

TEST_F(SystemInfoFixture, NoReleaseFileGivesSpecificationDefaults) {
  std::filesystem::create_directories(root + "/etc");
  json::object os = OsInfo(sys);
  EXPECT_EQ(os["id"], "linux");
  EXPECT_EQ(os["name"], "Linux");
  EXPECT_EQ(os["pretty_name"], "Linux");
  EXPECT_TRUE(os["version_id"].is_null());
  EXPECT_TRUE(os["source"].is_null());
}

TEST_F(SystemInfoFixture, LsbReleaseAndDebianVersionAreFallbacks) {
  Put(root, "/etc/lsb-release",
      "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=14.04\nDISTRIB_DESCRIPTION=\"Ubuntu 14.04.6 LTS\"\n");
  json::object os = OsInfo(sys);
  EXPECT_EQ(os["id"], "ubuntu");
  EXPECT_EQ(os["version_id"], "14.04");
  EXPECT_EQ(os["pretty_name"], "Ubuntu 14.04.6 LTS");
  std::filesystem::remove(root + "/etc/lsb-release");
  Put(root, "/etc/debian_version", "8.11\n");
  os = OsInfo(sys);
  EXPECT_EQ(os["id"], "debian");
  EXPECT_EQ(os["version_id"], "8.11");
  EXPECT_EQ(os["source"], "/etc/debian_version");
}

TEST_F(SystemInfoFixture, MeminfoKibibytesBecomeBytes) {
  Put(root, "/proc/meminfo",
      "MemTotal:        2000000 kB\nMemFree:          500000 kB\nMemAvailable:    1200000 kB\n"
      "Buffers:           10000 kB\nCached:           300000 kB\nSwapCached:            0 kB\n"
      "Shmem:              4000 kB\nSReclaimable:      20000 kB\nSwapTotal:       1048572 kB\n"
      "SwapFree:         1000000 kB\n");
  json::object m = MemoryInfo(sys);
  EXPECT_EQ(m["total_bytes"], 2000000ull * 1024);
  EXPECT_EQ(m["free_bytes"], 500000ull * 1024);
  EXPECT_EQ(m["available_bytes"], 1200000ull * 1024);
  EXPECT_EQ(m["buffers_bytes"], 10000ull * 1024);
  EXPECT_EQ(m["cached_bytes"], 320000ull * 1024);  // Cached + SReclaimable, as free(1)
  EXPECT_EQ(m["used_bytes"], (2000000ull - 500000 - 10000 - 320000) * 1024);
  EXPECT_EQ(m["shared_bytes"], 4000ull * 1024);
  EXPECT_EQ(m["swap_total_bytes"], 1048572ull * 1024);
  EXPECT_EQ(m["swap_free_bytes"], 1000000ull * 1024);
}

TEST_F(SystemInfoFixture, OldKernelWithoutMemAvailableGetsAnEstimate) {
  Put(root, "/proc/meminfo",
      "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n");
  json::object m = MemoryInfo(sys);
  EXPECT_EQ(m["available_bytes"], 310ull * 1024);
  EXPECT_TRUE(m["swap_total_bytes"].is_null());
}

TEST_F(SystemInfoFixture, CpuCountsComeFromSysfsAndMhzFromCpuinfo) {
  Put(root, "/proc/cpuinfo",
      "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold\n"
      "cpu MHz\t\t: 2100.000\n\nprocessor\t: 2\nvendor_id\t: GenuineIntel\n"
      "model name\t: Intel(R) Xeon(R) Gold\ncpu MHz\t\t: 3000.5\n\n");
  Put(root, "/sys/devices/system/cpu/present", "0-3\n");
  Put(root, "/sys/devices/system/cpu/online", "0,2\n");
  json::object c = CpuInfo(sys);
  EXPECT_EQ(c["model"], "Intel(R) Xeon(R) Gold");
  EXPECT_EQ(c["vendor"], "GenuineIntel");
  EXPECT_EQ(c["logical_count"], 4);
  EXPECT_EQ(c["online_count"], 2);
  EXPECT_EQ(c["online"], (json::array{0, 2}));
  ASSERT_EQ(c["per_cpu"].as_array().size(), 2u);
  EXPECT_EQ(c["per_cpu"].as_array()[1].as_object().at("cpu"), 2);
  EXPECT_DOUBLE_EQ(c["per_cpu"].as_array()[1].as_object().at("mhz").as_double(), 3000.5);
}

TEST_F(SystemInfoFixture, ArmCpuinfoUsesSysfsFrequencyAndImplementer) {
  Put(root, "/proc/cpuinfo",
      "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n"
      "processor\t: 1\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n\n");
  Put(root, "/sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "1500000\n");
  json::object c = CpuInfo(sys);
  EXPECT_EQ(c["vendor"], "0x41");
  EXPECT_TRUE(c["model"].is_null());
  EXPECT_EQ(c["logical_count"], 2);  // no sysfs counts: the cpuinfo entries
  EXPECT_TRUE(c["per_cpu"].as_array()[0].as_object().at("mhz").is_null());
  EXPECT_DOUBLE_EQ(c["per_cpu"].as_array()[1].as_object().at("mhz").as_double(), 1500.0);
}

void AddUtmp(const std::string& file, short type, const char* user, const char* line,
             const char* host, int32_t when, pid_t pid) {
  struct utmp u;
  std::memset(&u, 0, sizeof u);
  u.ut_type = type;
  u.ut_pid = pid;
  std::strncpy(u.ut_user, user, sizeof u.ut_user);
  std::strncpy(u.ut_line, line, sizeof u.ut_line);
  std::strncpy(u.ut_host, host, sizeof u.ut_host);
  u.ut_tv.tv_sec = when;
  ::updwtmp(file.c_str(), &u);  // glibc's own writer: the file format is not ours
}

TEST_F(SystemInfoFixture, UtmpLoginRecordsBecomeUsers) {
  std::filesystem::create_directories(root + "/run");
  std::string file = root + "/run/utmp";
  kvm::test::WriteFile(file, "");  // updwtmp appends to an existing file only
  AddUtmp(file, BOOT_TIME, "reboot", "~", "6.1.0", 1700000000, 0);
  AddUtmp(file, LOGIN_PROCESS, "LOGIN", "tty1", "", 1700000001, 11);
  AddUtmp(file, USER_PROCESS, "alice", "pts/0", "203.0.113.9", 1700000100, 1234);
  AddUtmp(file, USER_PROCESS, "bob", "tty2", "", 1700000200, 1300);
  AddUtmp(file, DEAD_PROCESS, "", "pts/1", "", 1700000300, 0);
  // A 32-character name fills ut_user with no terminating NUL.
  AddUtmp(file, USER_PROCESS, "abcdefghijklmnopqrstuvwxyz012345", "pts/2", "h", 1700000400, 7);
  json::array users = LoggedInUsers(sys);
  ASSERT_EQ(users.size(), 3u) << json::serialize(users);
  EXPECT_EQ(users[0], (json::object{{"name", "alice"},
                                    {"tty", "pts/0"},
                                    {"host", "203.0.113.9"},
                                    {"login_time", 1700000100},
                                    {"pid", 1234}}));
  EXPECT_EQ(users[1].as_object().at("name"), "bob");
  EXPECT_TRUE(users[1].as_object().at("host").is_null());
  EXPECT_EQ(users[2].as_object().at("name"), "abcdefghijklmnopqrstuvwxyz012345");
}

TEST_F(SystemInfoFixture, CacheKeepsSlowPartsForItsTtlButMemoryLoadAndUsersAreLive) {
  Put(root, "/etc/os-release", "ID=debian\n");
  Put(root, "/etc/machine-id", "11111111111111111111111111111111\n");
  Put(root, "/proc/loadavg", "0.50 0.25 0.10 2/345 6789\n");
  Put(root, "/proc/meminfo", "MemTotal: 1000 kB\nMemFree: 500 kB\n");
  std::filesystem::create_directories(root + "/run");
  std::string utmp = root + "/run/utmp";
  kvm::test::WriteFile(utmp, "");
  SystemInfoCache cache(std::chrono::hours(1));
  json::object first = CollectSystemInfo(sys, &cache);
  EXPECT_EQ(first["os"].at("id"), "debian");
  EXPECT_TRUE(first["users"].as_array().empty());

  Put(root, "/etc/os-release", "ID=fedora\n");
  Put(root, "/etc/machine-id", "22222222222222222222222222222222\n");
  Put(root, "/proc/loadavg", "3.00 2.00 1.00 7/400 6790\n");
  Put(root, "/proc/meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\n");
  AddUtmp(utmp, USER_PROCESS, "carol", "pts/3", "", 1700000500, 42);
  json::object second = CollectSystemInfo(sys, &cache);
  EXPECT_EQ(second["os"].at("id"), "debian");  // within the TTL: the cached parts
  EXPECT_EQ(second["machine_id"], "11111111111111111111111111111111");
  EXPECT_DOUBLE_EQ(second["load_average"].at("1m").as_double(), 3.0);  // live
  EXPECT_EQ(second["memory"].at("free_bytes"), 100 * 1024);
  ASSERT_EQ(second["users"].as_array().size(), 1u);  // utmp changed: re-read at once
  EXPECT_EQ(second["users"].as_array()[0].as_object().at("name"), "carol");

  SystemInfoCache expired(std::chrono::milliseconds(0));
  json::object fresh = CollectSystemInfo(sys, &expired);
  EXPECT_EQ(fresh["os"].at("id"), "fedora");
  EXPECT_EQ(fresh["machine_id"], "22222222222222222222222222222222");
  EXPECT_EQ(fresh, CollectSystemInfo(sys)) << "cached and uncached results differ";
}

TEST_F(SystemInfoFixture, CacheRefreshesWhenTheHostnameChanges) {
  Put(root, "/proc/sys/kernel/hostname", "web1\n");
  Put(root, "/etc/hosts", "10.0.0.5 web1.example.com web1\n10.0.0.6 db1.example.com db1\n");
  SystemInfoCache cache(std::chrono::hours(1));
  EXPECT_EQ(CollectSystemInfo(sys, &cache)["fqdn"], "web1.example.com");
  Put(root, "/proc/sys/kernel/hostname", "db1\n");
  EXPECT_EQ(CollectSystemInfo(sys, &cache)["fqdn"], "db1.example.com");
}

TEST_F(SystemInfoFixture, NoUtmpMeansNoUsers) { EXPECT_TRUE(LoggedInUsers(sys).empty()); }

TEST_F(SystemInfoFixture, TimezoneNameFromLocaltimeLinkThenEtcTimezone) {
  Link(root, "/etc/localtime", "../usr/share/zoneinfo/Europe/Berlin");
  EXPECT_EQ(TimezoneInfo(sys)["name"], "Europe/Berlin");
  std::filesystem::remove(root + "/etc/localtime");
  Put(root, "/etc/timezone", "America/New_York\n");
  json::object tz = TimezoneInfo(sys);
  EXPECT_EQ(tz["name"], "America/New_York");
  const std::string& off = std::string(tz["utc_offset"].as_string());
  ASSERT_EQ(off.size(), 6u);
  int64_t secs = tz["utc_offset_seconds"].as_int64();
  EXPECT_EQ(off[0], secs < 0 ? '-' : '+');
}

TEST_F(SystemInfoFixture, FqdnFromEtcHostsCanonicalName) {
  Put(root, "/etc/hosts",
      "127.0.0.1 localhost\n# 10.0.0.9 web1.wrong.example web1\n"
      "10.0.0.5\tweb1.example.com web1   # main\n");
  EXPECT_EQ(FindFqdn(sys, "web1"), "web1.example.com");
  EXPECT_TRUE(FindFqdn(sys, "db1").is_null());
  EXPECT_EQ(FindFqdn(sys, "db1.corp.example"), "db1.corp.example");
  Put(root, "/etc/hosts", "127.0.1.1 vm\n");
  EXPECT_TRUE(FindFqdn(sys, "vm").is_null());
}

TEST_F(SystemInfoFixture, WholeResultFromFixtureRoot) {
  Put(root, "/proc/sys/kernel/hostname", "fixture-host\n");
  Put(root, "/proc/sys/kernel/osrelease", "6.1.0-13-amd64\n");
  Put(root, "/proc/sys/kernel/version", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1\n");
  Put(root, "/proc/sys/kernel/ostype", "Linux\n");
  Put(root, "/proc/stat", "cpu  1 2 3 4\nbtime 1700000000\nprocesses 5\n");
  Put(root, "/proc/uptime", "12345.67 2000.00\n");
  Put(root, "/proc/loadavg", "0.50 0.25 0.10 2/345 6789\n");
  Put(root, "/var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n");
  json::object info = CollectSystemInfo(sys);
  EXPECT_EQ(info["hostname"], "fixture-host");
  EXPECT_EQ(info["kernel"].at("release"), "6.1.0-13-amd64");
  EXPECT_EQ(info["kernel"].at("version"), "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1");
  EXPECT_EQ(info["machine_id"], "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(info["boot_time"], 1700000000);
  EXPECT_DOUBLE_EQ(info["uptime_seconds"].as_double(), 12345.67);
  EXPECT_DOUBLE_EQ(info["load_average"].at("1m").as_double(), 0.5);
  EXPECT_DOUBLE_EQ(info["load_average"].at("15m").as_double(), 0.1);
  EXPECT_EQ(info["load_average"].at("running_tasks"), 2);
  EXPECT_EQ(info["load_average"].at("total_tasks"), 345);
  EXPECT_EQ(info["agent_version"], KVM_AGENT_VERSION);
  EXPECT_EQ(info["os"].at("id"), "linux");  // empty fixture: defaults
  EXPECT_TRUE(info["memory"].at("total_bytes").is_null());
}

TEST(SysCommon, InvalidUtf8BytesBecomeReplacementCharacters) {
  EXPECT_EQ(ToValidUtf8("plain"), "plain");
  EXPECT_EQ(ToValidUtf8("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(ToValidUtf8("a\xFF"
                        "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(ToValidUtf8("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  EXPECT_EQ(ToValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(ToValidUtf8("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // truncated
}

TEST(SysCommon, CpuListsExpandRanges) {
  EXPECT_EQ(ParseCpuList("0-3,5,7-8\n"), (std::vector<unsigned>{0, 1, 2, 3, 5, 7, 8}));
  EXPECT_EQ(ParseCpuList("0"), (std::vector<unsigned>{0}));
  EXPECT_EQ(ParseCpuList(""), (std::vector<unsigned>{}));
  EXPECT_FALSE(ParseCpuList("3-1"));
  EXPECT_FALSE(ParseCpuList("a"));
}

TEST(SysCommon, PathsNormalizeLexically) {
  EXPECT_EQ(NormalizePath("/sys/dev/block/../../devices/x/./y"), "/sys/devices/x/y");
  EXPECT_EQ(NormalizePath("/../a"), "/a");
  EXPECT_EQ(NormalizePath("/"), "/");
}

}  // namespace
}  // namespace kvm::sysinfo
