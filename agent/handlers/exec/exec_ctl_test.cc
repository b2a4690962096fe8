// kvmmanager-ctl exec / ps / kill against the real agent.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

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

TEST(CtlExec, GuestErrorsAndBadUsageHaveTheirOwnExitCodes) {
  AgentProcess agent;
  auto missing = RunProgram(Ctl(agent, {"exec", "--", "no-such-command-kvmtest"}));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("not_found"), std::string::npos) << missing.err;
  EXPECT_EQ(RunProgram(Ctl(agent, {"exec"})).exit_code, 2);
  auto timed = RunProgram(Ctl(agent, {"exec", "--command-timeout", "1", "--", "sleep", "30"}));
  EXPECT_EQ(timed.exit_code, 128 + SIGTERM);
  EXPECT_NE(timed.err.find("timed out"), std::string::npos);
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
  auto refused = RunProgram(Ctl(agent, {"kill", "1"}));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("permission_denied"), std::string::npos);
}

}  // namespace
}  // namespace kvm::exec
