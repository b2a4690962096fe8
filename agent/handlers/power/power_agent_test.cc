// shutdown/reboot/halt/power_cancel through the real agent binary, with the backend injected:
// the agent runs with KVM_AGENT_POWER_TEST_DIR=<fake root>, so it probes the fake root, runs
// only the fake programs in <fake root>/bin (which record their argv) and records reboot(2)
// instead of calling it. Every agent here is checked to carry that variable before any power
// request is sent: these tests must never power off the machine they run on.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utmp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/core/file_util.h"
#include "agent/handlers/power/power_backend.h"
#include "tests/support/agent_process.h"

namespace kvm {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using test::AgentProcess;
using test::TempDir;

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

std::string ReadOrEmpty(const std::string& path) {
  return ReadSmallFile(path).value_or(std::string());
}

// Waits until `path` exists (and is non-empty) or `limit` passes.
bool WaitForFile(const std::string& path, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (!ReadOrEmpty(path).empty()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// A fake system root and an agent started on it.
class PowerAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* d : {"bin", "run", "proc", "proc/1", "dev", "dev/pts"}) {
      ::mkdir((root_ / d).c_str(), 0755);
    }
  }

  std::string record() const { return root_ / "record"; }

  // A fake program that appends "<name> <args...>", its signal mask and ignored set, and the
  // time it started ("T:<ns>") to the record file, then runs `tail` (sleeps, exit codes).
  void FakeProgram(const std::string& name, const std::string& tail = "exit 0") {
    std::string path = root_ / ("bin/" + name);
    // The shell reads its own signal state with builtins, before it forks anything: dash blocks
    // every signal around each vfork and restores the mask only after the child has exec'd, so
    // a `grep /proc/$$/status` child could catch the shell with all signals blocked (seen once
    // under ASan).
    test::WriteFile(path,
                    "#!/bin/sh\nS=''\nwhile IFS= read -r l; do case \"$l\" in SigBlk:*|SigIgn:*)"
                    " S=\"$S$l\n\";; esac; done < /proc/$$/status\n"
                    "T=$(date +%s%N)\n{ printf '%s' \"" +
                        name +
                        "\"; for a in \"$@\"; do printf ' %s' \"$a\"; done; printf '\\n';"
                        " printf '%s' \"$S\"; echo \"T:$T\"; } >> '" +
                        record() + "'\n" + tail + "\n");
    ::chmod(path.c_str(), 0755);
  }
  void SystemdRunning() {
    ::mkdir((root_ / "run/systemd").c_str(), 0755);
    ::mkdir((root_ / "run/systemd/system").c_str(), 0755);
  }

  void StartAgent() {
    ::setenv("KVM_AGENT_POWER_TEST_DIR", root_.path().c_str(), 1);
    agent_ = std::make_unique<AgentProcess>();
    ::unsetenv("KVM_AGENT_POWER_TEST_DIR");
    // Refuse to go on unless the agent really is in test mode.
    std::string environ_text =
        ReadSmallFile("/proc/" + std::to_string(agent_->pid()) + "/environ").value_or("");
    std::string expected = "KVM_AGENT_POWER_TEST_DIR=" + root_.path();
    ASSERT_NE(environ_text.find(expected + '\0'), std::string::npos)
        << "agent not in power test mode; refusing to send power requests";
    // AgentProcess returns once the socket file exists, which is after bind() but possibly
    // before listen(): under load (ASan, parallel ctest) the first connect can be refused.
    auto end = std::chrono::steady_clock::now() + 20s;
    while (true) {
      try {
        if (agent_->Call("ping").ok) break;
      } catch (const ClientError&) {
      }
      ASSERT_LT(std::chrono::steady_clock::now(), end) << "agent never answered ping";
      std::this_thread::sleep_for(20ms);
    }
  }

  CallResult Call(const std::string& method, const json::object& params = {}) {
    return agent_->Call(method, params);
  }

  TempDir root_;
  std::unique_ptr<AgentProcess> agent_;
};

// The message reaches systemctl (its wall text, the journal) and the agent's log as one line
// without control characters: no forged log line, no escape sequence.
TEST_F(PowerAgentTest, MessageReachesSystemctlAndTheLogAsOneCleanLine) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  CallResult r = Call("reboot", {{"message", "bye\x1b[31m\xc2\x9b\nX exited 0"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("command").as_array().back(), "--message=bye?[31m? X exited 0");
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(200ms);  // let the script finish writing
  std::string rec = ReadOrEmpty(record());
  EXPECT_NE(rec.find("systemctl reboot --message=bye?[31m? X exited 0\n"), std::string::npos)
      << rec;
  std::string log = agent_->Stderr();
  EXPECT_EQ(log.find('\x1b'), std::string::npos) << log;
  EXPECT_EQ(log.find("\nX exited 0"), std::string::npos) << log;
}

TEST_F(PowerAgentTest, ShutdownAnswersFirstThenRunsSystemctlWithCleanSignalState) {
  SystemdRunning();
  FakeProgram("systemctl");
  FakeProgram("shutdown");
  StartAgent();
  CallResult r = Call("shutdown", {{"message", "maintenance"}});
  // The reply is here and the helper has not run yet.
  bool ran_before_reply = Exists(record());
  int64_t replied_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_FALSE(ran_before_reply);
  const auto& result = r.result.as_object();
  EXPECT_EQ(result.at("scheduled"), true);
  EXPECT_EQ(result.at("action"), "poweroff");
  EXPECT_EQ(result.at("method"), "systemd");
  EXPECT_EQ(result.at("delay_seconds"), 0);
  EXPECT_EQ(result.at("force"), false);
  EXPECT_EQ(result.at("test_mode"), true);
  EXPECT_EQ(result.at("command").as_array().back(), "--message=maintenance");

  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(200ms);  // let the script finish writing
  std::string rec = ReadOrEmpty(record());
  EXPECT_NE(rec.find("systemctl poweroff --message=maintenance\n"), std::string::npos) << rec;
  EXPECT_NE(rec.find("SigBlk:\t0000000000000000"), std::string::npos) << rec;
  // Signals 1-31 must not be ignored (the agent ignores SIGPIPE). glibc's posix_spawn leaves
  // its two internal signals (32, 33) ignored in every child; they are not ours to reset.
  size_t ign = rec.find("SigIgn:\t");
  ASSERT_NE(ign, std::string::npos) << rec;
  uint64_t ignored = std::stoull(rec.substr(ign + 8, 16), nullptr, 16);
  EXPECT_EQ(ignored & 0x7fffffffULL, 0u) << rec;
  EXPECT_EQ(rec.find("shutdown"), std::string::npos) << rec;
  // It ran after the reply had reached the host.
  size_t t = rec.find("T:");
  ASSERT_NE(t, std::string::npos) << rec;
  int64_t ran_ns = std::stoll(rec.substr(t + 2));
  EXPECT_GT(ran_ns - replied_ns, 0) << rec;
}

// "Answer first" is tied to the reply leaving, not to a timer: with 2.5 MB of earlier replies
// queued ahead of it for a host that is not reading, the action waits until the host reads.
TEST_F(PowerAgentTest, ActionWaitsForItsReplyToLeaveWhenTheHostReadsSlowly) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  std::string file = agent_->sandbox() + "/big.bin";
  test::WriteFile(file, std::string(48 * 1024, 'x'));
  auto client = agent_->Connect(std::chrono::milliseconds(20000));
  int sent = 0;
  for (int i = 0; i < 40; ++i) {
    json::object request{
        {"jsonrpc", "2.0"}, {"method", "file_read"}, {"params", {{"path", file}}}, {"id", i}};
    client->SendLine(json::serialize(request));
    ++sent;
    if (i % 5 == 4) std::this_thread::sleep_for(100ms);  // stay under max_concurrent_requests
  }
  std::this_thread::sleep_for(300ms);
  client->SendLine(R"({"jsonrpc":"2.0","method":"shutdown","id":"power"})");
  std::this_thread::sleep_for(1500ms);
  EXPECT_FALSE(Exists(record())) << "the action ran while its reply was still queued";

  int64_t got_power_ns = 0;
  for (int lines = 0; lines <= sent && got_power_ns == 0; ++lines) {
    json::value reply = json::parse(client->ReadLine());
    if (reply.at("id") == "power") {
      got_power_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
      EXPECT_TRUE(reply.as_object().contains("result")) << json::serialize(reply);
    }
  }
  ASSERT_NE(got_power_ns, 0) << "no reply to the shutdown request";
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(200ms);
  std::string rec = ReadOrEmpty(record());
  size_t t = rec.find("T:");
  ASSERT_NE(t, std::string::npos) << rec;
  // The reply was taken by the kernel only once we started reading; the action came after.
  EXPECT_GT(std::stoll(rec.substr(t + 2)), got_power_ns - 1'000'000'000) << rec;
}

TEST_F(PowerAgentTest, RebootWithoutSystemdUsesSysvShutdown) {
  FakeProgram("systemctl");  // installed, but systemd is not running
  FakeProgram("shutdown");
  StartAgent();
  CallResult r = Call("reboot");
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("method"), "sysv");
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(ReadOrEmpty(record()).substr(0, 17), "shutdown -r now\nS");
}

TEST_F(PowerAgentTest, HaltOnBusyboxShellInitUsesBusyboxForce) {
  FakeProgram("busybox");
  test::WriteFile(root_ / "proc/1/status", "Name:\tinit\nSigCgt:\t0000000000010000\n");
  test::WriteFile(root_ / "proc/1/cmdline", std::string("/bin/sh\0/init\0", 14));
  ::symlink((root_ / "bin/busybox").c_str(), (root_ / "proc/1/exe").c_str());
  StartAgent();
  CallResult r = Call("halt");
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("method"), "busybox-force");
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(ReadOrEmpty(record()).substr(0, 17), "busybox halt -f\nS");
}

TEST_F(PowerAgentTest, NoUsableMethodIsUnsupportedAndNothingRuns) {
  StartAgent();
  CallResult r = Call("shutdown");
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error_code, -32006);
  EXPECT_EQ(r.error_data.at("kind"), "unsupported");
  EXPECT_EQ(r.error_data.at("action"), "poweroff");
  CallResult cancel = Call("power_cancel");
  EXPECT_EQ(cancel.error_code, -32001);  // nothing was scheduled
}

TEST_F(PowerAgentTest, ForceRecordsRebootSyscallAndRunsNoProgram) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  CallResult r = Call("reboot", {{"force", true}});
  if (!power::Privileges::OfThisProcess().cap_sys_boot) {
    // Same user and capabilities as this test: the agent must refuse, not pretend.
    ASSERT_FALSE(r.ok);
    EXPECT_EQ(r.error_code, -32000);
    EXPECT_EQ(r.error_data.at("policy"), "CAP_SYS_BOOT");
    return;
  }
  bool recorded_before_reply = Exists(root_ / "reboot-syscall.log");
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_FALSE(recorded_before_reply);
  EXPECT_EQ(r.result.at("method"), "syscall");
  EXPECT_EQ(r.result.at("force"), true);
  ASSERT_TRUE(WaitForFile(root_ / "reboot-syscall.log", 10s)) << agent_->Stderr();
  EXPECT_EQ(ReadOrEmpty(root_ / "reboot-syscall.log"), "sync+reboot(RB_AUTOBOOT)\n");
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(Exists(record())) << "force must not run systemctl";
  // Executing: a second request is refused, without suggesting a cancel that cannot work.
  CallResult again = Call("shutdown");
  EXPECT_EQ(again.error_code, -32008);
  EXPECT_EQ(again.error_data.at("state"), "executing");
  EXPECT_NE(again.error_message.find("can no longer be cancelled"), std::string::npos)
      << again.error_message;
  EXPECT_EQ(again.error_message.find("power_cancel"), std::string::npos) << again.error_message;
}

TEST_F(PowerAgentTest, DelayIsHonoured) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  auto before = std::chrono::system_clock::now();
  CallResult r = Call("reboot", {{"delay_seconds", 2}});
  ASSERT_TRUE(r.ok) << r.error_message;
  auto replied = std::chrono::steady_clock::now();
  EXPECT_EQ(r.result.at("delay_seconds"), 2);
  int64_t expected_at =
      std::chrono::duration_cast<std::chrono::seconds>(before.time_since_epoch()).count() + 2;
  EXPECT_GE(r.result.at("execute_at").as_int64(), expected_at);
  EXPECT_LE(r.result.at("execute_at").as_int64(), expected_at + 2);
  std::this_thread::sleep_until(replied + 1200ms);
  EXPECT_FALSE(Exists(record())) << "ran before the delay was over";
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  EXPECT_GE(std::chrono::steady_clock::now() - replied, 1500ms);
}

TEST_F(PowerAgentTest, CancelStopsADelayedActionAndFreesTheSlot) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  ASSERT_TRUE(Call("shutdown", {{"delay_seconds", 2}}).ok);
  CallResult cancel = Call("power_cancel");
  ASSERT_TRUE(cancel.ok) << cancel.error_message;
  EXPECT_EQ(cancel.result.at("cancelled"), true);
  EXPECT_EQ(cancel.result.at("action"), "poweroff");
  std::this_thread::sleep_for(3s);
  EXPECT_FALSE(Exists(record())) << "cancelled action ran";
  EXPECT_EQ(Call("power_cancel").error_code, -32001);
  // The slot is free again: a new action is accepted and runs.
  CallResult r = Call("reboot");
  ASSERT_TRUE(r.ok) << r.error_message;
  ASSERT_TRUE(WaitForFile(record(), 10s));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(ReadOrEmpty(record()).substr(0, 17), "systemctl reboot\n");
}

TEST_F(PowerAgentTest, SecondRequestWhileScheduledIsAConflictNamingThePendingAction) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  CallResult first = Call("shutdown", {{"delay_seconds", 30}});
  ASSERT_TRUE(first.ok) << first.error_message;
  for (const char* method : {"reboot", "shutdown", "halt"}) {
    CallResult second = Call(method, {{"force", true}});
    ASSERT_FALSE(second.ok) << method;
    EXPECT_EQ(second.error_code, -32008) << method;
    EXPECT_EQ(second.error_data.at("kind"), "conflict");
    EXPECT_EQ(second.error_data.at("action"), "poweroff");
    EXPECT_EQ(second.error_data.at("state"), "scheduled");
    EXPECT_EQ(second.error_data.at("delay_seconds"), 30);
    EXPECT_EQ(second.error_data.at("execute_at"), first.result.at("execute_at"));
  }
  EXPECT_TRUE(Call("power_cancel").ok);
  EXPECT_FALSE(Exists(record()));
  EXPECT_FALSE(Exists(root_ / "reboot-syscall.log"));
}

TEST_F(PowerAgentTest, CancelWhileExecutingIsAConflict) {
  SystemdRunning();
  FakeProgram("systemctl", "sleep 3");
  StartAgent();
  ASSERT_TRUE(Call("shutdown").ok);
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  CallResult cancel = Call("power_cancel");
  ASSERT_FALSE(cancel.ok);
  EXPECT_EQ(cancel.error_code, -32008);
  EXPECT_EQ(cancel.error_data.at("state"), "executing");
}

TEST_F(PowerAgentTest, FailedHelperIsLoggedAndFreesTheSlot) {
  SystemdRunning();
  FakeProgram("systemctl", "echo 'Access denied by polkit' >&2; exit 1");
  StartAgent();
  ASSERT_TRUE(Call("reboot").ok);
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  // Once the failure is noticed the slot is free: a new request is accepted.
  CallResult r;
  auto end = std::chrono::steady_clock::now() + 10s;
  do {
    std::this_thread::sleep_for(100ms);
    r = Call("reboot", {{"delay_seconds", 60}});
  } while (!r.ok && r.error_code == -32008 && std::chrono::steady_clock::now() < end);
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_NE(agent_->Stderr().find("Access denied by polkit"), std::string::npos)
      << agent_->Stderr();
  EXPECT_TRUE(Call("power_cancel").ok);
}

// Zombie children of `pid` (from /proc/PID/task/*/children).
std::vector<std::string> ZombieChildren(pid_t pid) {
  std::vector<std::string> zombies;
  std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& task : std::filesystem::directory_iterator(task_dir)) {
    std::istringstream children(ReadOrEmpty(task.path().string() + "/children"));
    std::string child;
    while (children >> child) {
      std::string stat = ReadOrEmpty("/proc/" + child + "/stat");
      size_t paren = stat.rfind(')');
      if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z')
        zombies.push_back(child);
    }
  }
  return zombies;
}

// The agent is the subreaper of what its children leave behind; a power helper's orphan must
// be reaped too, even though no exec command has run (the exec module's reaper sleeps until a
// spawn is reported to it).
TEST_F(PowerAgentTest, OrphansAHelperLeavesAreReaped) {
  SystemdRunning();
  FakeProgram("systemctl", "(sleep 0.3) & exit 0");
  StartAgent();
  ASSERT_TRUE(Call("reboot").ok);
  ASSERT_TRUE(WaitForFile(record(), 10s)) << agent_->Stderr();
  std::this_thread::sleep_for(1s);  // the orphan has exited: a zombie until someone reaps it
  std::vector<std::string> zombies;
  auto end = std::chrono::steady_clock::now() + 15s;
  do {
    zombies = ZombieChildren(agent_->pid());
    if (zombies.empty()) break;
    std::this_thread::sleep_for(200ms);
  } while (std::chrono::steady_clock::now() < end);
  EXPECT_TRUE(zombies.empty()) << "zombie children of the agent: " << zombies.front();
}

void AppendUtmpUser(const std::string& path, const char* line) {
  struct utmp entry;
  std::memset(&entry, 0, sizeof entry);
  entry.ut_type = USER_PROCESS;
  std::strncpy(entry.ut_line, line, sizeof entry.ut_line);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, &entry, sizeof entry), static_cast<ssize_t>(sizeof entry));
  ::close(fd);
}

TEST_F(PowerAgentTest, MessageIsBroadcastToLoggedInTerminalsWithoutControlCodes) {
  SystemdRunning();
  FakeProgram("systemctl");
  AppendUtmpUser(root_ / "run/utmp", "pts/4");
  test::WriteFile(root_ / "dev/pts/4", "");
  StartAgent();
  CallResult r = Call("shutdown", {{"delay_seconds", 30}, {"message", "back soon\x1b[31m"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("message_recipients"), 1);
  std::string tty = ReadOrEmpty(root_ / "dev/pts/4");
  EXPECT_NE(tty.find("The system will power off in 30 seconds."), std::string::npos) << tty;
  EXPECT_NE(tty.find("back soon?[31m"), std::string::npos) << tty;
  EXPECT_EQ(tty.find('\x1b'), std::string::npos);
  CallResult cancel = Call("power_cancel");
  ASSERT_TRUE(cancel.ok);
  EXPECT_EQ(cancel.result.at("message_recipients"), 1);
  EXPECT_NE(ReadOrEmpty(root_ / "dev/pts/4").find("The scheduled power off has been cancelled."),
            std::string::npos);
}

TEST_F(PowerAgentTest, BadParamsAreRejectedAndScheduleNothing) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  const json::object bad[] = {
      {{"delay_seconds", -1}},
      {{"delay_seconds", 86401}},
      {{"delay_seconds", "5"}},
      {{"delay_seconds", 1.5}},
      {{"force", "yes"}},
      {{"message", 7}},
      {{"message", std::string(1025, 'x')}},
      {{"when", "now"}},
  };
  for (const auto& params : bad) {
    CallResult r = Call("shutdown", params);
    EXPECT_EQ(r.error_code, -32602) << json::serialize(params);
  }
  EXPECT_EQ(Call("power_cancel", {{"id", 1}}).error_code, -32602);
  EXPECT_EQ(Call("power_cancel").error_code, -32001);
  std::this_thread::sleep_for(700ms);
  EXPECT_FALSE(Exists(record()));
}

TEST_F(PowerAgentTest, AgentStopDropsAScheduledAction) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  ASSERT_TRUE(Call("shutdown", {{"delay_seconds", 2}}).ok);
  agent_->Signal(SIGTERM);
  EXPECT_EQ(agent_->WaitExit(10s), std::optional<int>(0));
  std::this_thread::sleep_for(2500ms);
  EXPECT_FALSE(Exists(record()));
}

TEST_F(PowerAgentTest, CtlSchedulesAndCancels) {
  SystemdRunning();
  FakeProgram("systemctl");
  StartAgent();
  const std::string sock = agent_->socket_path();
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {KVM_CTL_BINARY, "--socket", sock});
    return test::RunProgram(args);
  };
  auto out = run({"shutdown", "--delay", "60", "--message", "patching"});
  EXPECT_EQ(out.exit_code, 0) << out.err;
  EXPECT_NE(out.out.find("poweroff scheduled via systemd in 60 s"), std::string::npos) << out.out;
  out = run({"reboot"});
  EXPECT_EQ(out.exit_code, 1);
  EXPECT_NE(out.err.find("-32008"), std::string::npos) << out.err;
  out = run({"power-cancel"});
  EXPECT_EQ(out.exit_code, 0) << out.err;
  EXPECT_NE(out.out.find("cancelled the scheduled poweroff"), std::string::npos) << out.out;
  out = run({"power-cancel"});
  EXPECT_EQ(out.exit_code, 1);
  out = run({"halt", "--delay", "-5"});
  EXPECT_EQ(out.exit_code, 2) << out.err;
  out = run({"--json", "halt", "--delay", "60"});
  EXPECT_EQ(out.exit_code, 0) << out.err;
  EXPECT_EQ(test::ParseJson(out.out).at("action"), "halt");
  EXPECT_EQ(run({"power-cancel"}).exit_code, 0);
  EXPECT_FALSE(Exists(record()));
}

}  // namespace
}  // namespace kvm
