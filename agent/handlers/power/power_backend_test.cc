// Method choice, privileges, message sanitizing and utmp reading, on fake system roots. Every
// Environment here is ForTest(): nothing in this file can reach a real power-off path.
#include "agent/handlers/power/power_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utmp.h>

#include <cstring>
#include <string>

#include "protocol/errors.h"
#include "tests/support/agent_process.h"

namespace kvm::power {
namespace {

using test::TempDir;
using test::WriteFile;

class FakeRoot {
 public:
  FakeRoot() {
    ::mkdir((dir_ / "bin").c_str(), 0755);
    ::mkdir((dir_ / "proc").c_str(), 0755);
    ::mkdir((dir_ / "proc/1").c_str(), 0755);
  }
  Environment env() const { return Environment::ForTest(dir_.path()); }
  std::string operator/(const std::string& name) const { return dir_ / name; }
  std::string Program(const std::string& name) const {
    std::string path = dir_ / ("bin/" + name);
    WriteFile(path, "#!/bin/sh\nexit 0\n");
    ::chmod(path.c_str(), 0755);
    return path;
  }
  void SystemdRunning() const {
    ::mkdir((dir_ / "run").c_str(), 0755);
    ::mkdir((dir_ / "run/systemd").c_str(), 0755);
    ::mkdir((dir_ / "run/systemd/system").c_str(), 0755);
  }
  // PID 1's caught-signal mask, and what its executable is called.
  void Init(const std::string& sig_cgt_hex, const std::string& exe_name,
            const std::string& sig_blk_hex = "0000000000000000",
            const std::string& argv0 = "/bin/sh") const {
    WriteFile(dir_ / "proc/1/cmdline", argv0 + std::string("\0/init\0", 7));
    WriteFile(dir_ / "proc/1/status", "Name:\tinit\nSigBlk:\t" + sig_blk_hex +
                                          "\nSigIgn:\t0000000000000000\nSigCgt:\t" + sig_cgt_hex +
                                          "\n");
    std::string exe = dir_ / ("exe-" + exe_name);
    ::mkdir(exe.c_str(), 0755);
    WriteFile(exe + "/" + exe_name, "");
    ::symlink((exe + "/" + exe_name).c_str(), (dir_ / "proc/1/exe").c_str());
  }

 private:
  TempDir dir_;
};

constexpr Privileges kRoot{true, true};
constexpr Privileges kUser{false, false};

ErrorCode CodeOf(const std::function<void()>& f, boost::json::object* data = nullptr) {
  try {
    f();
  } catch (const RpcError& e) {
    if (data) *data = e.data();
    return e.code();
  }
  ADD_FAILURE() << "no RpcError thrown";
  return ErrorCode::kInternalError;
}

TEST(PowerPlanTest, RunningSystemdIsAskedThroughSystemctlWithTheMessage) {
  FakeRoot root;
  root.SystemdRunning();
  std::string systemctl = root.Program("systemctl");
  root.Program("shutdown");
  root.Program("busybox");
  Plan plan = ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, "bye now");
  EXPECT_EQ(plan.method, "systemd");
  EXPECT_EQ(plan.argv, (std::vector<std::string>{systemctl, "poweroff", "--message=bye now"}));
  plan = ChoosePlan(root.env(), kUser, Action::kReboot, false, "");
  EXPECT_EQ(plan.argv, (std::vector<std::string>{systemctl, "reboot"}));  // polkit decides
  plan = ChoosePlan(root.env(), kRoot, Action::kHalt, false, "");
  EXPECT_EQ(plan.argv, (std::vector<std::string>{systemctl, "halt"}));
}

TEST(PowerPlanTest, SystemctlWithoutRunningSystemdFallsBackToSysvShutdown) {
  FakeRoot root;
  root.Program("systemctl");
  std::string shutdown = root.Program("shutdown");
  EXPECT_EQ(ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, "").argv,
            (std::vector<std::string>{shutdown, "-h", "-P", "now"}));
  EXPECT_EQ(ChoosePlan(root.env(), kRoot, Action::kReboot, false, "").argv,
            (std::vector<std::string>{shutdown, "-r", "now"}));
  Plan halt = ChoosePlan(root.env(), kRoot, Action::kHalt, false, "");
  EXPECT_EQ(halt.method, "sysv");
  EXPECT_EQ(halt.argv, (std::vector<std::string>{shutdown, "-h", "-H", "now"}));
}

TEST(PowerPlanTest, ShutdownThatIsSystemctlIsNotTakenForSysv) {
  FakeRoot root;
  std::string systemctl = root.Program("systemctl");
  ::symlink(systemctl.c_str(), (root / "bin/shutdown").c_str());
  boost::json::object data;
  EXPECT_EQ(CodeOf([&] { ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, ""); }, &data),
            ErrorCode::kUnsupported);
  EXPECT_EQ(data["action"], "poweroff");
  EXPECT_EQ(data["checked"].as_array().size(), 3u);
}

TEST(PowerPlanTest, SysvNeedsRoot) {
  FakeRoot root;
  root.Program("shutdown");
  boost::json::object data;
  EXPECT_EQ(CodeOf([&] { ChoosePlan(root.env(), kUser, Action::kReboot, false, ""); }, &data),
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(data["policy"], "root");
}

TEST(PowerPlanTest, BusyboxSignalsAShellInitThatTrapsTheActionsSignal) {
  FakeRoot root;
  std::string busybox = root.Program("busybox");
  // A shell /init with `trap ... USR1 USR2 TERM`: handlers for halt, poweroff, reboot.
  root.Init("0000000000004a00", "busybox");
  for (Action a : {Action::kPowerOff, Action::kReboot, Action::kHalt}) {
    Plan plan = ChoosePlan(root.env(), kRoot, a, false, "");
    EXPECT_EQ(plan.method, "busybox");
    EXPECT_EQ(plan.argv, (std::vector<std::string>{busybox, ActionName(a)}));
  }
}

TEST(PowerPlanTest, BusyboxSignalsAnInitThatBlocksTheSignalForSignalfd) {
  FakeRoot root;
  std::string busybox = root.Program("busybox");
  root.Init("0000000000000000", "someinit", "0000000000004a07");
  for (Action a : {Action::kPowerOff, Action::kReboot, Action::kHalt}) {
    Plan plan = ChoosePlan(root.env(), kRoot, a, false, "");
    EXPECT_EQ(plan.method, "busybox") << ActionName(a);
  }
}

TEST(PowerPlanTest, BusyboxInitIsSignalledThoughProcShowsNoHandler) {
  // busybox init (1.35) waits in sigtimedwait: /proc/1/status showed SigBlk 0 and SigCgt
  // 0x80000 (SIGTSTP only) in the test VM, yet it takes USR1/USR2/TERM.
  for (const char* argv0 : {"init", "/sbin/init", "/init", "linuxrc"}) {
    FakeRoot root;
    std::string busybox = root.Program("busybox");
    root.Init("0000000000080000", "busybox", "0000000000000000", argv0);
    Plan plan = ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, "");
    EXPECT_EQ(plan.method, "busybox") << argv0;
    EXPECT_EQ(plan.argv, (std::vector<std::string>{busybox, "poweroff"})) << argv0;
  }
}

TEST(PowerPlanTest, BusyboxShellAsInitGetsTheForcedBusyboxPath) {
  FakeRoot root;
  std::string busybox = root.Program("busybox");
  root.Init("0000000000010000", "busybox");  // a shell script /init: catches only SIGCHLD
  Plan plan = ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, "");
  EXPECT_EQ(plan.method, "busybox-force");
  EXPECT_EQ(plan.argv, (std::vector<std::string>{busybox, "poweroff", "-f"}));
  EXPECT_EQ(ChoosePlan(root.env(), kRoot, Action::kReboot, false, "").argv,
            (std::vector<std::string>{busybox, "reboot", "-f"}));
  EXPECT_EQ(CodeOf([&] { ChoosePlan(root.env(), kUser, Action::kPowerOff, false, ""); }),
            ErrorCode::kPermissionDenied);
}

TEST(PowerPlanTest, ForeignInitIgnoringTheSignalIsUnsupportedRatherThanBypassed) {
  FakeRoot root;
  root.Program("busybox");
  root.Init("00000000000004e8", "process_manager");
  try {
    ChoosePlan(root.env(), kRoot, Action::kPowerOff, false, "");
    ADD_FAILURE() << "expected unsupported";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("process_manager"), std::string::npos) << e.what();
  }
}

TEST(PowerPlanTest, NothingUsableIsUnsupported) {
  FakeRoot root;
  EXPECT_EQ(CodeOf([&] { ChoosePlan(root.env(), kRoot, Action::kReboot, false, ""); }),
            ErrorCode::kUnsupported);
}

TEST(PowerPlanTest, ForceSkipsEveryProgramAndNeedsCapSysBoot) {
  FakeRoot root;
  root.SystemdRunning();
  root.Program("systemctl");
  Plan plan = ChoosePlan(root.env(), Privileges{false, true}, Action::kReboot, true, "");
  EXPECT_EQ(plan.method, "syscall");
  EXPECT_TRUE(plan.argv.empty());
  boost::json::object data;
  EXPECT_EQ(CodeOf(
                [&] {
                  ChoosePlan(root.env(), Privileges{true, false}, Action::kReboot, true, "");
                },
                &data),
            ErrorCode::kPermissionDenied);
  EXPECT_EQ(data["policy"], "CAP_SYS_BOOT");
}

TEST(PowerForcedRebootTest, TestModeRecordsTheCallInsteadOfMakingIt) {
  FakeRoot root;
  Outcome out = ForcedReboot(root.env(), Action::kHalt);
  EXPECT_TRUE(out.ok) << out.detail;
  EXPECT_EQ(test::ReadFileText(root / "reboot-syscall.log"), "sync+reboot(RB_HALT_SYSTEM)\n");
}

TEST(PowerEnvironmentTest, OnlyAnAbsoluteExistingDirectoryEnablesTestMode) {
  FakeRoot root;
  ::setenv("KVM_AGENT_POWER_TEST_DIR", "relative/dir", 1);
  EXPECT_FALSE(Environment::FromProcessEnvironment().test_mode);
  ::setenv("KVM_AGENT_POWER_TEST_DIR", (root / "missing").c_str(), 1);
  EXPECT_FALSE(Environment::FromProcessEnvironment().test_mode);
  ::setenv("KVM_AGENT_POWER_TEST_DIR", (root / "bin").c_str(), 1);
  Environment env = Environment::FromProcessEnvironment();
  EXPECT_TRUE(env.test_mode);
  EXPECT_EQ(env.program_dirs, (std::vector<std::string>{root / "bin/bin"}));
  ::unsetenv("KVM_AGENT_POWER_TEST_DIR");
  EXPECT_FALSE(Environment::FromProcessEnvironment().test_mode);
}

TEST(PowerMessageTest, TerminalControlsAreNeutralized) {
  EXPECT_EQ(SanitizeForTerminal("plain text, é ü"), "plain text, é ü");
  EXPECT_EQ(SanitizeForTerminal("a\nb\tc"), "a\r\nb\tc");
  EXPECT_EQ(SanitizeForTerminal("\x1b[2J\x07\x7f\r"), "?[2J???");
  EXPECT_EQ(SanitizeForTerminal("x\xc2\x9b"
                                "31m"),
            "x?31m");                                      // 8-bit CSI in UTF-8
  EXPECT_EQ(SanitizeForTerminal("\xc2\xa0"), "\xc2\xa0");  // NBSP is printable
}

void AppendUtmp(const std::string& path, short type, const char* line) {
  struct utmp entry;
  std::memset(&entry, 0, sizeof entry);
  entry.ut_type = type;
  std::strncpy(entry.ut_line, line, sizeof entry.ut_line);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, &entry, sizeof entry), static_cast<ssize_t>(sizeof entry));
  ::close(fd);
}

TEST(PowerMessageTest, OnlyLoggedInUsersTerminalsInsideDevAreListed) {
  FakeRoot root;
  ::mkdir((root / "run").c_str(), 0755);
  std::string utmp = root / "run/utmp";
  AppendUtmp(utmp, BOOT_TIME, "~");
  AppendUtmp(utmp, USER_PROCESS, "pts/3");
  AppendUtmp(utmp, DEAD_PROCESS, "tty9");
  AppendUtmp(utmp, USER_PROCESS, "../etc/passwd");
  AppendUtmp(utmp, USER_PROCESS, "tty1");
  AppendUtmp(utmp, USER_PROCESS, "pts/3");  // two sessions on one terminal: one message
  EXPECT_EQ(LoggedInTerminals(root.env()), (std::vector<std::string>{"pts/3", "tty1"}));
}

TEST(PowerMessageTest, BroadcastWritesToEachTerminalThatExists) {
  FakeRoot root;
  ::mkdir((root / "run").c_str(), 0755);
  ::mkdir((root / "dev").c_str(), 0755);
  ::mkdir((root / "dev/pts").c_str(), 0755);
  AppendUtmp(root / "run/utmp", USER_PROCESS, "pts/3");
  AppendUtmp(root / "run/utmp", USER_PROCESS, "tty1");  // no such device: skipped
  WriteFile(root / "dev/pts/3", "");
  EXPECT_EQ(BroadcastToTerminals(root.env(), "hello\r\n"), 1);
  EXPECT_EQ(test::ReadFileText(root / "dev/pts/3"), "hello\r\n");
}

}  // namespace
}  // namespace kvm::power
