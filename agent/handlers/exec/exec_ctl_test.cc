// kvmmanager-ctl exec / ps / kill against the real agent.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "agent/handlers/exec/exec_test_util.h"

extern char** environ;

namespace kvm::exec {
namespace {

using AgentProcess = testing::ReadyAgent;
using test::RunProgram;

std::vector<std::string> Ctl(const AgentProcess& agent, std::vector<std::string> args) {
  std::vector<std::string> argv{KVM_CTL_BINARY, "--socket", agent.socket_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

TEST(CtlExec, PassesTheGuestExitCodeAndStreams) {
  AgentProcess agent;
  auto r = RunProgram(Ctl(agent, {"exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7"}));
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_EQ(RunProgram(Ctl(agent, {"exec", "--", "true"})).exit_code, 0);
  EXPECT_EQ(RunProgram(Ctl(agent, {"exec", "--", "false"})).exit_code, 1);
  auto killed = RunProgram(Ctl(agent, {"exec", "--", "sh", "-c", "kill -KILL $$"}));
  EXPECT_EQ(killed.exit_code, 128 + SIGKILL);
}

TEST(CtlExec, PassesBinaryOutputEnvCwdAndStdin) {
  AgentProcess agent;
  auto bin = RunProgram(Ctl(agent, {"exec", "--", "printf", "\\377\\000"}));
  EXPECT_EQ(bin.exit_code, 0);
  EXPECT_EQ(bin.out, std::string("\xff\0", 2));
  auto env = RunProgram(
      Ctl(agent, {"exec", "-e", "A=1 2", "-C", "/usr", "--", "sh", "-c", "echo \"$A\"; pwd"}));
  EXPECT_EQ(env.out, "1 2\n/usr\n");
  auto in = RunProgram(Ctl(agent, {"exec", "--stdin", "--", "tr", "a-z", "A-Z"}), "hello\n");
  EXPECT_EQ(in.out, "HELLO\n");
}

// exec -i streams stdin: input far larger than one message (max_message_size_kb is 64)
// arrives whole; a command that stops reading ends the copy quietly, as in a shell pipeline.
TEST(CtlExec, StdinOfAnySizeIsStreamedToTheCommand) {
  AgentProcess agent;
  std::string in(5'000'000, '\0');
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<char>((i * 7919) >> 3);
  auto cat = RunProgram(Ctl(agent, {"exec", "-i", "--", "cat"}), in);
  EXPECT_EQ(cat.exit_code, 0) << cat.err;
  EXPECT_EQ(cat.out.size(), in.size());
  EXPECT_TRUE(cat.out == in);
  auto head = RunProgram(Ctl(agent, {"exec", "-i", "--", "head", "-c", "5"}), in);
  EXPECT_EQ(head.exit_code, 0) << head.err;
  EXPECT_EQ(head.out, in.substr(0, 5));
  EXPECT_EQ(head.err, "");
  auto empty = RunProgram(Ctl(agent, {"exec", "-i", "--", "wc", "-c"}), "");
  EXPECT_EQ(empty.out, "0\n");
}

// Input reaches the command as it is typed, not when stdin ends: the guest command answers
// the first line before the local writer sends the second (it waits for that answer).
TEST(CtlExec, StdinIsSentAsItArrivesNotAtItsEnd) {
  AgentProcess agent;
  std::string flag = "/tmp/kvm-ctl-stdin-flag-" + std::to_string(::getpid());
  std::filesystem::remove(flag);
  std::string ctl;
  for (const auto& a : Ctl(agent, {"exec", "-i", "--", "sh", "-c",
                                   "read x; touch " + flag + "; read y; echo $x$y"})) {
    ctl += "'" + a + "' ";
  }
  std::string writer = "echo a; i=0; while [ ! -e " + flag +
                       " ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
                       "[ -e " +
                       flag + " ] || echo 'the first line never arrived' >&2; echo b";
  auto r = RunProgram({"sh", "-c", "(" + writer + ") | " + ctl});
  std::filesystem::remove(flag);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "ab\n");
  EXPECT_EQ(r.err, "");
}

TEST(CtlExec, GuestErrorsAndBadUsageHaveTheirOwnExitCodes) {
  AgentProcess agent;
  auto missing = RunProgram(Ctl(agent, {"exec", "--", "no-such-command-kvmtest"}));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("not_found"), std::string::npos) << missing.err;
  EXPECT_EQ(RunProgram(Ctl(agent, {"exec"})).exit_code, 2);
  auto timed = RunProgram(Ctl(agent, {"exec", "--command-timeout", "1", "--", "sleep", "30"}));
  EXPECT_EQ(timed.exit_code, 128 + SIGTERM);
  EXPECT_NE(timed.err.find("timed out"), std::string::npos);
  // As --help says: 1 to 604800 s (refused by ctl itself, a usage error), and more than the
  // agent's cap is capped, not refused.
  auto too_long = RunProgram(Ctl(agent, {"exec", "--command-timeout", "604801", "--", "true"}));
  EXPECT_EQ(too_long.exit_code, 2);
  EXPECT_NE(too_long.err.find("1 to 604800"), std::string::npos) << too_long.err;
  EXPECT_EQ(RunProgram(Ctl(agent, {"exec", "--command-timeout", "604800", "--", "true"})).exit_code,
            0);
}

// The pid of a process whose command line is exactly `argv` (NULs between), or -1.
pid_t FindProcess(const std::string& cmdline) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "cmdline", std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (text == cmdline) return static_cast<pid_t>(std::stol(name));
  }
  return -1;
}

// Ctrl-C on ctl stops the guest command (SIGTERM) and reports how it ended; ctl is not just
// killed, leaving the command running in the guest.
TEST(CtlExec, CtrlCStopsTheGuestCommandAndReportsItsSignal) {
  AgentProcess agent;
  test::BackgroundProcess ctl(Ctl(agent, {"exec", "--", "sleep", "1000.7373"}));
  ASSERT_GT(ctl.pid(), 0);
  const std::string guest_cmdline = std::string(
      "sleep\0"
      "1000.7373\0",
      16);
  struct KillLeftover {  // a failure must not leave the sleep running on the machine
    const std::string& cmdline;
    ~KillLeftover() {
      if (pid_t left = FindProcess(cmdline); left > 0) ::kill(left, SIGKILL);
    }
  } cleanup{guest_cmdline};
  pid_t guest = -1;
  for (int i = 0; i < 10000 && guest < 0; ++i) {
    guest = FindProcess(guest_cmdline);
    if (guest < 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_GT(guest, 0) << "the guest command did not start";
  ::kill(ctl.pid(), SIGINT);
  // 130 would mean ctl was killed by the signal instead of handling it.
  EXPECT_EQ(ctl.Wait(std::chrono::seconds(20)), 128 + SIGTERM);
  EXPECT_EQ(FindProcess(guest_cmdline), -1) << "the guest command is still running";
}

std::string ShellQuoted(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += "'" + a + "' ";
  return out;
}

// `exec -- yes | head -1`: when the local reader goes away, ctl stops the guest command and
// exits 141 (128+SIGPIPE) quietly, also when SIGPIPE is ignored (then ctl sees only EPIPE);
// the command does not keep running, unread, until its timeout.
TEST(CtlExec, ReaderThatGoesAwayStopsTheGuestCommand) {
  AgentProcess agent;
  for (bool ignore_sigpipe : {false, true}) {
    SCOPED_TRACE(ignore_sigpipe ? "SIGPIPE ignored" : "SIGPIPE default");
    std::string marker =
        "kvmtest-sigpipe-" + std::to_string(::getpid()) + (ignore_sigpipe ? "-ign" : "-dfl");
    test::TempDir dir;
    std::string status_file = dir / "status";
    std::string script = std::string(ignore_sigpipe ? "trap '' PIPE; " : "") + "{ " +
                         ShellQuoted(Ctl(agent, {"exec", "--", "yes", marker})) + "; echo $? >" +
                         status_file + "; } | head -n 1";
    auto start = std::chrono::steady_clock::now();
    auto r = RunProgram({"sh", "-c", script}, "", std::chrono::seconds(20));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    EXPECT_EQ(r.out, marker + "\n");
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(test::ReadFileText(status_file), "141\n");
    auto left = testing::WaitGone(marker, std::chrono::seconds(3));
    EXPECT_TRUE(left.empty()) << "the guest command is still running";
    for (pid_t pid : left) ::kill(pid, SIGKILL);
    // Its handle ends too (the agent has reaped the command).
    std::string running;
    for (int i = 0; i < 150; ++i) {
      auto list = agent.Call("exec_list");
      ASSERT_TRUE(list.ok);
      running.clear();
      for (const auto& h : list.result.at("handles").as_array()) {
        if (h.at("running").as_bool()) running += boost::json::serialize(h);
      }
      if (running.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(running, "");
  }
}

// More ctl execs at once than max_concurrent_requests: every one gets its command's output and
// exit code. Busy answers are retried, and waiting ctls (long-polling exec_status) do not hold
// the slots other requests need.
TEST(CtlExec, MoreConcurrentExecsThanMaxConcurrentRequestsAllSucceed) {
  AgentProcess agent(testing::WithConfig({{"max_concurrent_requests", 3}}));
  constexpr int kExecs = 12;
  std::vector<test::RunResult> results(kExecs);
  std::vector<std::thread> threads;
  for (int i = 0; i < kExecs; ++i) {
    threads.emplace_back([&, i] {
      results[i] = RunProgram(Ctl(agent, {"exec", "--", "sh", "-c",
                                          "sleep 3; echo done" + std::to_string(i) + "; exit 3"}));
    });
  }
  // Once all have started (their exec_starts may have to retry busy; slow under sanitizers),
  // and while they all wait for their commands, other requests are served, not refused busy.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    auto r = agent.Call("exec_list");
    if (r.ok && r.result.at("handles").as_array().size() == static_cast<size_t>(kExecs)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int i = 0; i < 5; ++i) {
    auto r = agent.Call("exec_list");
    EXPECT_TRUE(r.ok) << r.error_code << " " << r.error_message;
    if (r.ok) {
      EXPECT_EQ(r.result.at("handles").as_array().size(), static_cast<size_t>(kExecs));
    }
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kExecs; ++i) {
    EXPECT_EQ(results[i].exit_code, 3) << i << ": " << results[i].err;
    EXPECT_EQ(results[i].out, "done" + std::to_string(i) + "\n") << i;
    EXPECT_EQ(results[i].err, "") << i;
  }
}

TEST(CtlPsKill, ListsAndKillsProcesses) {
  AgentProcess agent;
  auto ps = RunProgram(Ctl(agent, {"ps"}));
  EXPECT_EQ(ps.exit_code, 0);
  EXPECT_NE(ps.out.find("PID"), std::string::npos);
  EXPECT_NE(ps.out.find(KVM_AGENT_BINARY), std::string::npos);

  pid_t pid;
  char* argv[] = {const_cast<char*>("sleep"), const_cast<char*>("1000.4545"), nullptr};
  ASSERT_EQ(::posix_spawnp(&pid, "sleep", nullptr, nullptr, argv, environ), 0);
  auto kill = RunProgram(Ctl(agent, {"kill", "-s", "KILL", std::to_string(pid)}));
  EXPECT_EQ(kill.exit_code, 0) << kill.err;
  EXPECT_EQ(kill.out, "sent SIGKILL to " + std::to_string(pid) + " (sleep)\n");
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // A guest user's argv with a terminal escape (set the window title, ring the bell) is shown
  // defused: the host's terminal never receives the ESC.
  pid_t evil;
  char* evil_argv[] = {const_cast<char*>("sleep\x1b]0;owned\x07\xc2\x9b"),
                       const_cast<char*>("1000.4646"), nullptr};
  ASSERT_EQ(::posix_spawnp(&evil, "sleep", nullptr, nullptr, evil_argv, environ), 0);
  auto shown = RunProgram(Ctl(agent, {"ps"}));
  ::kill(evil, SIGKILL);
  ::waitpid(evil, nullptr, 0);
  EXPECT_NE(shown.out.find("sleep?]0;owned??"), std::string::npos) << shown.out;
  EXPECT_EQ(shown.out.find('\x1b'), std::string::npos);
  EXPECT_EQ(shown.out.find("\xc2\x9b"), std::string::npos);

  auto refused = RunProgram(Ctl(agent, {"kill", "1"}));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("permission_denied"), std::string::npos);
}

}  // namespace
}  // namespace kvm::exec
