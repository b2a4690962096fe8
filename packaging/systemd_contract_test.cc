// What kvmmanager-agent.service relies on, checked on the real binary: Type=notify readiness
// (READY=1 only once the agent serves), reload and stop notifications, and man pages that
// document every option and command the programs' --help lists.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <regex>
#include <set>
#include <string>

#include "agent/core/unique_fd.h"
#include "tests/support/agent_process.h"

namespace kvm {
namespace {

using std::chrono::seconds;

// Plays systemd's notify socket (abstract, like systemd's own when it uses one).
class NotifySocket {
 public:
  NotifySocket()
      : name_("@kvm-notify-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++)) {
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + 1, name_.data() + 1, name_.size() - 1);
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size());
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
    ::setenv("NOTIFY_SOCKET", name_.c_str(), 1);  // inherited by the agent started next
  }
  ~NotifySocket() { ::unsetenv("NOTIFY_SOCKET"); }

  // The next datagram, or "" after `timeout`.
  std::string Next(seconds timeout = seconds(20)) {
    timeval tv{static_cast<time_t>(timeout.count()), 0};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[512];
    ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    return n <= 0 ? "" : std::string(buf, static_cast<size_t>(n));
  }

 private:
  static inline int counter_ = 0;
  std::string name_;
  UniqueFd fd_;
};

TEST(AgentSystemdNotify, SendsReadyOnlyOnceItServes) {
  NotifySocket notify;
  test::TempDir dir;
  std::string sock = dir / "late.sock";
  // listen_unix=false: AgentProcess does not wait for the socket, so only READY=1 tells us.
  test::AgentProcess::Options options;
  options.extra_args = {"--listen", "unix:" + sock};
  options.listen_unix = false;
  test::AgentProcess agent(options);
  ::unsetenv("NOTIFY_SOCKET");
  ASSERT_EQ(notify.Next(), "READY=1") << agent.Stderr();
  struct stat st;
  ASSERT_EQ(::stat(sock.c_str(), &st), 0) << "READY=1 came before the socket existed";
  AgentClient client(sock, std::chrono::seconds(10));
  EXPECT_TRUE(client.Call("ping", {}).ok);
}

TEST(AgentSystemdNotify, ReportsReloadingThenReadyOnSighup) {
  NotifySocket notify;
  test::AgentProcess agent;
  ASSERT_EQ(notify.Next(), "READY=1");
  agent.Signal(SIGHUP);
  EXPECT_EQ(notify.Next(), "RELOADING=1");
  EXPECT_EQ(notify.Next(), "READY=1");
  // A broken config file is rejected, but systemd must still see the reload finish.
  test::WriteFile(agent.config_path(), "{ not json");
  agent.Signal(SIGHUP);
  EXPECT_EQ(notify.Next(), "RELOADING=1");
  EXPECT_EQ(notify.Next(), "READY=1");
  EXPECT_TRUE(agent.Call("ping").ok);
}

TEST(AgentSystemdNotify, ReportsStoppingOnSigtermAndExitsCleanly) {
  NotifySocket notify;
  test::AgentProcess agent;
  ASSERT_EQ(notify.Next(), "READY=1");
  agent.Signal(SIGTERM);
  EXPECT_EQ(notify.Next(), "STOPPING=1");
  EXPECT_EQ(agent.WaitExit(seconds(20)), 0);
}

TEST(AgentSystemdNotify, SendsNothingWhenStartFails) {
  NotifySocket notify;
  test::TempDir dir;
  // A unix socket path inside a missing directory cannot be bound: start-up fails (exit 1).
  auto run = test::RunProgram({KVM_AGENT_BINARY, "--foreground", "--config", dir / "none.json",
                               "--listen", "unix:" + (dir / "missing/agent.sock")});
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(run.exit_code, 1) << run.err;
  EXPECT_EQ(notify.Next(seconds(1)), "");
}

// Every "--long-option" in `text`.
std::set<std::string> LongOptions(const std::string& text) {
  std::set<std::string> found;
  std::regex option(R"((^|[\s,\[])(--[a-z][a-z-]+))");
  for (std::sregex_iterator it(text.begin(), text.end(), option), end; it != end; ++it) {
    found.insert((*it)[2]);
  }
  return found;
}

// The man page source with roff's "\-" turned back into "-".
std::string ManPage(const std::string& name) {
  std::string text = test::ReadFileText(std::string(KVM_SOURCE_DIR) + "/packaging/files/" + name);
  return std::regex_replace(text, std::regex(R"(\\-)"), "-");
}

TEST(ManPages, AgentPageDocumentsEveryOptionOfHelp) {
  auto help = test::RunProgram({KVM_AGENT_BINARY, "--help"});
  ASSERT_EQ(help.exit_code, 0);
  std::string page = ManPage("kvmmanager-agent.8");
  auto options = LongOptions(help.out);
  ASSERT_GE(options.size(), 7u) << help.out;
  for (const auto& option : options) EXPECT_NE(page.find(option), std::string::npos) << option;
}

TEST(ManPages, CtlPageDocumentsEveryOptionAndCommandOfHelp) {
  auto help = test::RunProgram({KVM_CTL_BINARY, "--help"});
  ASSERT_EQ(help.exit_code, 0);
  std::string page = ManPage("kvmmanager-ctl.1");
  auto options = LongOptions(help.out);
  ASSERT_GE(options.size(), 4u) << help.out;
  for (const auto& option : options) EXPECT_NE(page.find(option), std::string::npos) << option;
  // CLI11 lists subcommands, two-space indented, after "Subcommands:".
  size_t at = help.out.find("Subcommands:");
  ASSERT_NE(at, std::string::npos) << help.out;
  std::regex command(R"(\n  ([a-z][a-z0-9_-]*))");
  std::string rest = help.out.substr(at);
  int commands = 0;
  for (std::sregex_iterator it(rest.begin(), rest.end(), command), end; it != end; ++it) {
    ++commands;
    std::string name = (*it)[1];
    EXPECT_TRUE(page.find(".B " + name + "\n") != std::string::npos ||
                page.find(".BI " + name + " ") != std::string::npos)
        << "command " << name << " is not in the COMMANDS section of kvmmanager-ctl.1";
  }
  EXPECT_GE(commands, 2);
}

}  // namespace
}  // namespace kvm
