// process_list and process_kill through the real agent binary.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <thread>

#include "agent/handlers/exec/exec_test_util.h"

extern char** environ;

namespace kvm::exec {
namespace {

using namespace testing;
using AgentProcess = testing::ReadyAgent;

// A process of our own to list and kill; reaped by the destructor.
class Sleeper {
 public:
  explicit Sleeper(const std::string& marker) {
    std::string arg = marker;
    char* argv[] = {const_cast<char*>("sleep"), arg.data(), nullptr};
    if (::posix_spawnp(&pid_, "sleep", nullptr, nullptr, argv, environ) != 0) pid_ = -1;
  }
  ~Sleeper() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Waits for it to end; returns the terminating signal (0 if it exited or is still running).
  int WaitSignal(std::chrono::milliseconds limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }

 private:
  pid_t pid_ = -1;
};

const json::object* FindPid(const json::value& result, int64_t pid) {
  for (const auto& p : result.at("processes").as_array()) {
    if (p.at("pid").as_int64() == pid) return &p.as_object();
  }
  return nullptr;
}

TEST(ProcessList, DescribesEveryProcessFromProc) {
  AgentProcess agent;
  Sleeper sleeper("1000.3131");
  auto r = agent.Call("process_list");
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("count").as_int64(), r.result.at("processes").as_array().size());
  const json::object* self = FindPid(r.result, agent.pid());
  ASSERT_NE(self, nullptr);
  EXPECT_EQ(self->at("ppid").as_int64(), ::getpid());
  EXPECT_EQ(self->at("uid").as_int64(), ::getuid());
  if (::getuid() == 0) {
    EXPECT_EQ(self->at("user").as_string(), "root");
  }
  EXPECT_EQ(self->at("cmdline").as_array()[0].as_string(), KVM_AGENT_BINARY);
  EXPECT_GT(self->at("rss_bytes").as_int64(), 0);
  EXPECT_NEAR(static_cast<double>(self->at("start_time").as_int64()),
              static_cast<double>(std::time(nullptr)), 120.0);
  EXPECT_FALSE(self->at("kernel_thread").as_bool());
  EXPECT_TRUE(self->at("cpu_time_ms").is_number());
  const json::object* sleeper_info = FindPid(r.result, sleeper.pid());
  ASSERT_NE(sleeper_info, nullptr);
  EXPECT_EQ(sleeper_info->at("name").as_string(), "sleep");
  std::string state(sleeper_info->at("state").as_string());
  EXPECT_TRUE(state == "S" || state == "R") << state;
  EXPECT_EQ(sleeper_info->at("cmdline").as_array()[1].as_string(), "1000.3131");
  EXPECT_EQ(agent.Call("process_list", {{"all", true}}).error_code, -32602);
}

TEST(ProcessKill, SignalsAnOrdinaryProcess) {
  AgentProcess agent;
  Sleeper sleeper("1000.3232");
  auto r = agent.Call("process_kill", {{"pid", sleeper.pid()}, {"signal", "SIGUSR1"}});
  ASSERT_TRUE(r.ok) << r.error_message;
  EXPECT_EQ(r.result.at("signal").as_int64(), SIGUSR1);
  EXPECT_EQ(r.result.at("name").as_string(), "sleep");
  EXPECT_EQ(sleeper.WaitSignal(std::chrono::seconds(5)), SIGUSR1);
}

TEST(ProcessKill, DefaultSignalIsTerm) {
  AgentProcess agent;
  Sleeper sleeper("1000.3333");
  ASSERT_TRUE(agent.Call("process_kill", {{"pid", sleeper.pid()}}).ok);
  EXPECT_EQ(sleeper.WaitSignal(std::chrono::seconds(5)), SIGTERM);
}

TEST(ProcessKill, RefusesInitTheAgentAndKernelThreads) {
  AgentProcess agent;
  auto init = agent.Call("process_kill", {{"pid", 1}, {"signal", 0 + SIGKILL}});
  EXPECT_EQ(init.error_code, -32000);
  EXPECT_EQ(Policy(init), "process_kill");
  auto self = agent.Call("process_kill", {{"pid", agent.pid()}});
  EXPECT_EQ(self.error_code, -32000);
  EXPECT_EQ(Policy(self), "process_kill");
  // Kernel threads exist on any real (guest) kernel; a container may hide them.
  auto list = agent.Call("process_list");
  int64_t kthread = 0;
  for (const auto& p : list.result.at("processes").as_array()) {
    if (p.at("kernel_thread").as_bool()) {
      kthread = p.at("pid").as_int64();
      break;
    }
  }
  if (kthread > 1) {
    auto k = agent.Call("process_kill", {{"pid", kthread}, {"signal", "KILL"}});
    EXPECT_EQ(k.error_code, -32000);
    EXPECT_EQ(Policy(k), "process_kill");
  } else {
    ADD_FAILURE() << "no kernel thread visible in /proc to test the refusal with";
  }
  EXPECT_TRUE(agent.Call("ping").ok);
}

TEST(ProcessKill, BadPidsAndSignalsAreClearErrors) {
  AgentProcess agent;
  EXPECT_EQ(agent.Call("process_kill", {{"pid", 0}}).error_code, -32602);
  EXPECT_EQ(agent.Call("process_kill", {{"pid", -1}}).error_code, -32602);
  EXPECT_EQ(agent.Call("process_kill", {{"pid", "1"}}).error_code, -32602);
  EXPECT_EQ(agent.Call("process_kill", json::object{}).error_code, -32602);
  EXPECT_EQ(agent.Call("process_kill", {{"pid", 4194303}}).error_code, -32001);
  Sleeper sleeper("1000.3434");
  EXPECT_EQ(agent.Call("process_kill", {{"pid", sleeper.pid()}, {"signal", "BOGUS"}}).error_code,
            -32602);
  EXPECT_EQ(agent.Call("process_kill", {{"pid", sleeper.pid()}, {"signal", 99}}).error_code,
            -32602);
  EXPECT_EQ(agent.Call("process_kill", {{"pid", sleeper.pid()}, {"signal", 1.5}}).error_code,
            -32602);
}

TEST(ProcessKill, WhitelistLimitsWhatMayBeKilled) {
  AgentProcess agent(WithConfig({}, {{"command_whitelist", json::array{"ls"}}}));
  Sleeper sleeper("1000.3535");
  auto r = agent.Call("process_kill", {{"pid", sleeper.pid()}});
  EXPECT_EQ(r.error_code, -32000);
  EXPECT_EQ(Policy(r), "command_whitelist");
  AgentProcess allowing(WithConfig({}, {{"command_whitelist", json::array{"sleep"}}}));
  EXPECT_TRUE(allowing.Call("process_kill", {{"pid", sleeper.pid()}}).ok);
  EXPECT_EQ(sleeper.WaitSignal(std::chrono::seconds(5)), SIGTERM);
}

// A thread id (from /proc/PID/task) is not a process id: a clear not_found naming the
// process it belongs to, not an io_error from pidfd_open; and nothing is signalled.
TEST(ProcessKill, ThreadIdIsNotFoundNamingItsProcess) {
  AgentProcess agent;
  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread thread([&] {
    tid = ::gettid();
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  while (tid == 0) std::this_thread::yield();
  auto r = agent.Call("process_kill", {{"pid", tid.load()}, {"signal", "CONT"}});
  done = true;
  thread.join();
  EXPECT_EQ(r.error_code, -32001) << r.error_message;
  EXPECT_EQ(Kind(r), "not_found");
  EXPECT_NE(r.error_message.find("thread"), std::string::npos) << r.error_message;
  ASSERT_TRUE(r.error_data.is_object());
  EXPECT_EQ(r.error_data.as_object().at("thread_of").as_int64(), ::getpid());
}

// A command line longer than the 64 KiB process_list reads is flagged, not silently cut.
TEST(ProcessList, CommandLineCutAt64KiBIsFlagged) {
  AgentProcess agent;
  std::string big(70000, 'x');
  pid_t pid;
  char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"),
                  const_cast<char*>("sleep 1000.6161"), big.data(), nullptr};
  posix_spawnattr_t attr;  // its own group: the sleep it forks goes with it
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  ASSERT_EQ(::posix_spawnp(&pid, "sh", nullptr, &attr, argv, environ), 0);
  posix_spawnattr_destroy(&attr);
  Sleeper plain("1000.6262");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto r = agent.Call("process_list");
  ::kill(-pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ASSERT_TRUE(r.ok);
  const json::object* cut = FindPid(r.result, pid);
  ASSERT_NE(cut, nullptr);
  EXPECT_TRUE(cut->at("cmdline_truncated").as_bool());
  size_t bytes = 0;
  for (const auto& a : cut->at("cmdline").as_array()) bytes += a.as_string().size() + 1;
  EXPECT_EQ(bytes - 1, 64u * 1024);  // the last argument, cut, has no NUL after it
  const json::object* whole = FindPid(r.result, plain.pid());
  ASSERT_NE(whole, nullptr);
  EXPECT_FALSE(whole->contains("cmdline_truncated"));
}

}  // namespace
}  // namespace kvm::exec
