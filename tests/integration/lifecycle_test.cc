// Start-up, configuration, signals and daemon mode of the real agent binary.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <thread>

#include "tests/integration/test_util.h"

namespace kvm::test {
namespace {
namespace json = boost::json;

RunResult RunAgent(std::vector<std::string> args) {
  args.insert(args.begin(), KVM_AGENT_BINARY);
  return RunProgram(args, "", std::chrono::seconds(20));
}

TEST(AgentFlags, VersionHelpAndUsageErrors) {
  RunResult v = RunAgent({"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.out.rfind("kvmmanager-agent ", 0), 0u) << v.out;
  RunResult h = RunAgent({"--help"});
  EXPECT_EQ(h.exit_code, 0);
  for (const char* flag : {"--foreground", "--log-level", "--device", "--config", "--listen",
                           "--check-config", "--version", "--help"}) {
    EXPECT_NE(h.out.find(flag), std::string::npos) << flag;
  }
  RunResult bad = RunAgent({"--frobnicate"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--frobnicate"), std::string::npos) << bad.err;
  RunResult level = RunAgent({"--log-level", "loud", "--check-config"});
  EXPECT_EQ(level.exit_code, 2);
  EXPECT_NE(level.err.find("--log-level"), std::string::npos) << level.err;
  RunResult missing = RunAgent({"--config"});
  EXPECT_EQ(missing.exit_code, 2);
}

// Usage errors name the option the user typed, also inside a group of short options or with
// a value given to a flag.
TEST(AgentFlags, UsageErrorsNameTheOffendingOption) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {{"-xf"}, "unknown option -x\n"},
           {{"-fx"}, "unknown option -x\n"},
           {{"--foreground=1"}, "option --foreground takes no value"},
           {{"--check-config=yes"}, "option --check-config takes no value"},
           {{"--bogus=2"}, "unknown option --bogus\n"},
           {{"-fl"}, "option -l needs a value"},
           {{"--device", ""}, "--device needs a path"},  // was retried for ever as "open ''"
           {{"--config="}, "--config needs a path"},
           {{"--listen", "unix:/tmp/kvm-twice.sock", "--listen", "unix:/tmp/kvm-twice.sock"},
            "--listen unix:/tmp/kvm-twice.sock is given twice"},  // was "another agent is..."
           {{"--listen", "unix:/tmp/kvm-twice.sock", "--listen", "unix:/tmp/.//kvm-twice.sock"},
            "--listen unix:/tmp/kvm-twice.sock is given twice"},
       }) {
    RunResult r = RunAgent(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0];
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.args[0] << ": " << r.err;
  }
}

// Under systemd (stderr is the stream $JOURNAL_STREAM names) each line carries its syslog
// priority for journald; elsewhere, and for another stream, lines are plain.
TEST(AgentLog, JournalStreamGetsSyslogPriorities) {
  std::string agent = std::string(KVM_AGENT_BINARY) +
                      " --foreground --config /nonexistent --listen unix:/nonexistent-dir/x.sock";
  RunResult journal =
      RunProgram({"/bin/sh", "-c",
                  "exec 2>&1; JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec " + agent});
  EXPECT_EQ(journal.exit_code, 1);
  EXPECT_NE(journal.out.find("<6>kvmmanager-agent[info] config /nonexistent not found"),
            std::string::npos)
      << journal.out;
  EXPECT_NE(journal.out.find("<3>kvmmanager-agent[error] fatal:"), std::string::npos)
      << journal.out;
  RunResult other = RunProgram({"/bin/sh", "-c", "exec 2>&1; JOURNAL_STREAM=1:2 exec " + agent});
  EXPECT_NE(other.out.find("\nkvmmanager-agent[error] fatal:"), std::string::npos) << other.out;
  EXPECT_EQ(other.out.find("<3>"), std::string::npos) << other.out;
}

// --check-config also says when a log_file could never be opened (valid JSON, useless value),
// and creates nothing.
TEST(AgentConfig, CheckConfigWarnsOfALogFileThatCannotWork) {
  TempDir dir;
  // A name too long stands for what open() refuses in a directory that exists (root passes
  // permission checks, so EACCES cannot be shown here).
  for (const std::string& file :
       {dir.path(), dir / "no-dir/agent.log", dir / std::string(300, 'x'), dir / "fine.log"}) {
    WriteFile(dir / "c.json", json::serialize(json::object{{"log_file", file}}));
    RunResult r = RunAgent({"--check-config", "--config", dir / "c.json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    bool warned = r.err.find("warning: log_file " + file) != std::string::npos;
    EXPECT_EQ(warned, file != dir / "fine.log") << file << ": " << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "fine.log"));
}

TEST(AgentConfig, CheckConfigPrintsEffectiveConfigOrNamesTheBadKey) {
  TempDir dir;
  WriteFile(dir / "good.json", R"({"max_concurrent_requests": 4, "extra_key": 1})");
  RunResult good = RunAgent({"--check-config", "--config", dir / "good.json"});
  EXPECT_EQ(good.exit_code, 0) << good.err;
  auto printed = ParseJson(good.out);
  EXPECT_EQ(printed.at("max_concurrent_requests"), 4);
  EXPECT_EQ(printed.at("channel_name"), "org.kvmmanager.agent.0");
  EXPECT_NE(good.err.find("extra_key"), std::string::npos)
      << "unknown key not warned: " << good.err;

  WriteFile(dir / "bad.json", R"({"security": {"max_file_size_mb": "ten"}})");
  RunResult bad = RunAgent({"--check-config", "--config", dir / "bad.json"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("security.max_file_size_mb"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("integer"), std::string::npos) << bad.err;

  RunResult absent = RunAgent({"--check-config", "--config", dir / "absent.json"});
  EXPECT_EQ(absent.exit_code, 0);
  EXPECT_EQ(ParseJson(absent.out).at("max_message_size_kb"), 64);
}

// A whitelist entry naming no program on this system is valid config that allows nothing: a
// typo to show, not an error.
TEST(AgentConfig, CheckConfigWarnsOfWhitelistEntriesThatAllowNothing) {
  TempDir dir;
  WriteFile(dir / "c.json", R"({"security":{"command_whitelist":["ls","no-such-program-kvm"]}})");
  RunResult r = RunAgent({"--check-config", "--config", dir / "c.json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("command_whitelist entry \"no-such-program-kvm\" allows nothing"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("entry \"ls\""), std::string::npos) << r.err;
}

TEST(AgentConfig, CheckConfigShowsTheLogLevelGivenOnTheCommandLine) {
  TempDir dir;
  WriteFile(dir / "c.json", R"({"log_level": "debug"})");
  RunResult r = RunAgent({"--check-config", "--config", dir / "c.json", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ParseJson(r.out).at("log_level"), "warn") << r.out;
}

TEST(AgentConfig, ConfigFromASlowPipeIsReadToTheEnd) {
  // The writer pauses mid-text: a reader that took a short read for the end would see "{".
  RunResult r =
      RunProgram({"/bin/sh", "-c",
                  "{ printf '{\"max_concurrent_requests\"'; sleep 0.3; printf ': 3}'; } | \"$0\" "
                  "--check-config --config /dev/stdin",
                  KVM_AGENT_BINARY});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ParseJson(r.out).at("max_concurrent_requests"), 3) << r.out;
}

TEST(AgentConfig, InvalidConfigStopsStartUpWithExitCode2) {
  TempDir dir;
  for (const char* text : {"{", "[]", R"({"max_message_size_kb": -1})",
                           R"({"security": {"allowed_write_paths": "/tmp"}})"}) {
    WriteFile(dir / "c.json", text);
    RunResult r = RunAgent(
        {"--foreground", "--config", dir / "c.json", "--listen", "unix:" + (dir / "s.sock")});
    EXPECT_EQ(r.exit_code, 2) << text;
    EXPECT_NE(r.err.find("invalid config"), std::string::npos) << r.err;
  }
}

TEST(AgentConfig, MissingConfigFileMeansDefaultsAndIsLogged) {
  AgentProcess::Options options;
  options.extra_args = {"--config", "/nonexistent/kvm.json"};  // the last --config wins
  AgentProcess agent(options);
  CallResult r = agent.Call("get_agent_info");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.result.at("limits").at("max_command_timeout_seconds"), 300);
  EXPECT_NE(agent.Stderr().find("not found; using built-in defaults"), std::string::npos);
}

TEST(AgentConfig, LogFileReceivesLogLines) {
  AgentProcess probe;
  json::object config = json::parse(probe.DefaultTestConfig()).as_object();
  TempDir dir;
  config["log_file"] = dir / "agent.log";
  AgentProcess::Options options;
  options.config_json = json::serialize(config);
  mode_t umask_before = ::umask(0);  // inherited by the agent: a new log must still be 0640
  AgentProcess agent(options);
  ::umask(umask_before);
  ASSERT_TRUE(agent.Call("ping").ok);
  EXPECT_NE(ReadFileText(dir / "agent.log").find("listening on unix:"), std::string::npos);
  struct stat st;
  ASSERT_EQ(::stat((dir / "agent.log").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

// Started with 0-2 closed (an init that gives it none), the agent's own files must not take
// those numbers: its log file would become "stdin" of whatever inherits it, its epoll or a
// socket "stdout". They are /dev/null, and the agent serves and logs as usual.
TEST(AgentLog, ClosedStandardDescriptorsAreFilledWithDevNull) {
  AgentProcess probe;
  json::object config = json::parse(probe.DefaultTestConfig()).as_object();
  TempDir dir;
  config["log_file"] = dir / "agent.log";
  WriteFile(dir / "config.json", json::serialize(config));
  std::string sock = dir / "agent.sock";
  BackgroundProcess agent({"/bin/sh", "-c",
                           std::string("exec ") + KVM_AGENT_BINARY + " --foreground --config " +
                               (dir / "config.json") + " --listen unix:" + sock + " <&- >&- 2>&-"});
  ASSERT_GT(agent.pid(), 0);
  for (int i = 0; i < 1000 && !std::filesystem::exists(sock); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto client = std::make_unique<AgentClient>(sock, std::chrono::seconds(10));
  EXPECT_TRUE(client->Call("ping").ok);
  for (int fd = 0; fd <= 2; ++fd) {
    std::string link = "/proc/" + std::to_string(agent.pid()) + "/fd/" + std::to_string(fd);
    EXPECT_EQ(std::filesystem::read_symlink(link), "/dev/null") << "fd " << fd;
  }
  EXPECT_NE(ReadFileText(dir / "agent.log").find("listening on unix:"), std::string::npos);
}

// A FIFO as log_file with nobody reading it: the open failed to return, with SIGTERM masked,
// so only SIGKILL ended the agent. It is now a log file that cannot be opened (a warning).
TEST(AgentLog, FifoLogFileWithoutAReaderDoesNotHangStartUp) {
  AgentProcess probe;
  json::object config = json::parse(probe.DefaultTestConfig()).as_object();
  TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo.log").c_str(), 0600), 0);
  config["log_file"] = dir / "fifo.log";
  AgentProcess::Options options;
  options.config_json = json::serialize(config);
  AgentProcess agent(options);
  EXPECT_TRUE(agent.Call("ping").ok);
  EXPECT_NE(agent.Stderr().find("cannot open log file " + dir / "fifo.log"), std::string::npos)
      << agent.Stderr();
}

TEST(AgentSignals, SigtermStopsGracefullyAndRemovesTheSocket) {
  AgentProcess agent;
  ASSERT_TRUE(agent.Call("ping").ok);
  agent.Signal(SIGTERM);
  auto status = agent.WaitExit(std::chrono::seconds(15));
  ASSERT_TRUE(status.has_value()) << "agent did not exit after SIGTERM";
  EXPECT_EQ(*status, 0);
  EXPECT_FALSE(std::filesystem::exists(agent.socket_path()));
  EXPECT_NE(agent.Stderr().find("SIGTERM: stopping"), std::string::npos);
}

TEST(AgentSignals, SigtermAnswersRequestsAlreadyReceived) {
  AgentProcess agent;
  auto client = agent.Connect();
  std::string burst;
  for (int i = 0; i < 2000; ++i) burst += Request("ping", std::to_string(i)) + "\n";
  client->SendLine(burst);
  agent.Signal(SIGTERM);
  // Everything sent before the stop is answered (pong or shutting_down); nothing is lost.
  int answered = 0;
  try {
    for (;;) {
      auto reply = ParseJson(client->ReadLine());
      int64_t code = ErrorCodeOf(reply);
      EXPECT_TRUE(code == 0 || code == -32009) << json::serialize(reply);
      ++answered;
    }
  } catch (const ClientError&) {
  }
  EXPECT_EQ(answered, 2000);
  ASSERT_TRUE(agent.WaitExit(std::chrono::seconds(15)).has_value());
}

// A client whose request is still running when SIGTERM comes may send more: those get
// shutting_down (PROTOCOL.md), and the running request its result.
TEST(AgentSignals, RequestSentDuringTheStopGetsShuttingDown) {
  AgentProcess agent;
  auto client = agent.Connect();
  client->SendLine(Request("exec_command", "1", R"({"command":"sleep","args":["1"]})"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  agent.Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  client->SendLine(Request("ping", "2"));
  std::map<int64_t, int64_t> codes;  // id -> error code (0: a result)
  try {
    for (int i = 0; i < 2; ++i) {
      auto reply = ParseJson(client->ReadLine());
      codes[reply.at("id").as_int64()] = ErrorCodeOf(reply);
    }
  } catch (const ClientError& e) {
    ADD_FAILURE() << e.what();
  }
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(codes[2], -32009);
  EXPECT_EQ(agent.WaitExit(std::chrono::seconds(15)), 0);
}

TEST(AgentSignals, SighupReloadsConfigAndKeepsOldOneIfInvalid) {
  AgentProcess agent;
  json::object config = json::parse(agent.DefaultTestConfig()).as_object();
  config["max_message_size_kb"] = 1;
  WriteFile(agent.config_path(), json::serialize(config));
  agent.Signal(SIGHUP);
  bool reloaded = false;
  for (int i = 0; i < 200 && !reloaded; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CallResult r = agent.Call("get_agent_info");
    reloaded = r.ok && r.result.at("limits").at("max_message_size_kb") == 1;
  }
  ASSERT_TRUE(reloaded) << agent.Stderr();
  auto reply = ParseJson(
      agent.RoundTrip(Request("ping", "1", R"({"x":")" + std::string(2000, 'a') + "\"}")));
  EXPECT_EQ(ErrorCodeOf(reply), -32002);

  WriteFile(agent.config_path(), R"({"max_message_size_kb": "big"})");
  agent.Signal(SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CallResult r = agent.Call("get_agent_info");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.result.at("limits").at("max_message_size_kb"), 1);
  EXPECT_NE(agent.Stderr().find("config reload failed"), std::string::npos);
}

// Finds the pid of a process whose command line contains `needle`.
pid_t FindProcess(const std::string& needle) {
  DIR* proc = ::opendir("/proc");
  pid_t found = -1;
  while (dirent* entry = ::readdir(proc)) {
    pid_t pid = std::atoi(entry->d_name);
    if (pid <= 0) continue;
    std::string cmdline = ReadFileText("/proc/" + std::string(entry->d_name) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(needle) != std::string::npos && cmdline.find(KVM_AGENT_BINARY) == 0)
      found = pid;
  }
  ::closedir(proc);
  return found;
}

TEST(AgentDaemon, DaemonizesAndReturnsOnlyWhenServing) {
  TempDir dir;
  std::string sock = dir / "daemon.sock";
  RunResult r = RunAgent({"--config", "/nonexistent", "--listen", "unix:" + sock});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The launcher has returned: the socket must already be served.
  auto client = std::make_unique<AgentClient>(sock, std::chrono::seconds(10));
  EXPECT_TRUE(client->Call("ping").ok);
  pid_t pid = FindProcess(sock);
  ASSERT_GT(pid, 0);
  std::string stat = ReadFileText("/proc/" + std::to_string(pid) + "/stat");
  // Field 5 (ppid) is no longer us, and it runs in its own session.
  EXPECT_NE(stat.find(") S ") != std::string::npos || stat.find(") R ") != std::string::npos,
            false);
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 500 && ::kill(pid, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(::kill(pid, 0), 0) << "daemon did not stop";
}

// A descriptor the launcher passed on (here a locked file, as under a `flock` wrapper) must
// not stay open, and the lock held, for the daemon's whole life.
TEST(AgentDaemon, InheritedDescriptorsAreClosed) {
  TempDir dir;
  std::string sock = dir / "daemon.sock";
  std::string lock_path = dir / "lock";
  int held = ::open(lock_path.c_str(), O_CREAT | O_RDWR, 0600);  // no O_CLOEXEC: inherited
  ASSERT_GE(held, 0);
  ASSERT_EQ(::flock(held, LOCK_EX), 0);
  RunResult r = RunAgent({"--config", "/nonexistent", "--listen", "unix:" + sock});
  ::close(held);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  pid_t pid = FindProcess(sock);
  ASSERT_GT(pid, 0);
  std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& entry : std::filesystem::directory_iterator(fd_dir)) {
    std::error_code ec;
    EXPECT_NE(std::filesystem::read_symlink(entry.path(), ec), lock_path) << entry.path();
  }
  int again = ::open(lock_path.c_str(), O_RDWR | O_CLOEXEC);
  EXPECT_EQ(::flock(again, LOCK_EX | LOCK_NB), 0) << "the daemon still holds the lock";
  ::close(again);
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 500 && ::kill(pid, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

TEST(AgentDaemon, StartUpFailureIsReportedByTheLauncher) {
  RunResult r = RunAgent({"--config", "/nonexistent", "--listen", "unix:/nonexistent-dir/x.sock"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bind unix:/nonexistent-dir/x.sock"), std::string::npos) << r.err;
}

// SIGKILLs a daemon the test found, should the test end before stopping it.
struct DaemonGuard {
  pid_t pid = -1;
  ~DaemonGuard() {
    if (pid > 0) ::kill(pid, SIGKILL);
  }
};

// Runs the agent without --foreground from the directory `cwd`.
RunResult RunAgentIn(const std::string& cwd, const std::vector<std::string>& args) {
  std::vector<std::string> argv{"/bin/sh", "-c", "cd \"$1\" && shift && exec \"$0\" \"$@\"",
                                KVM_AGENT_BINARY, cwd};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProgram(argv, "", std::chrono::seconds(20));
}

// Waits until `path` holds `needle` at least `count` times.
bool WaitForText(const std::string& path, const std::string& needle, size_t count) {
  for (int i = 0; i < 500; ++i) {
    std::string text = ReadFileText(path);
    size_t found = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
      ++found;
    if (found >= count) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool StopDaemon(DaemonGuard& daemon) {
  ::kill(daemon.pid, SIGTERM);
  for (int i = 0; i < 1000 && ::kill(daemon.pid, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (::kill(daemon.pid, 0) == 0) return false;
  daemon.pid = -1;
  return true;
}

TEST(AgentDaemon, RelativeConfigPathStillNamesTheSameFileOnSighup) {
  TempDir dir;
  // A name unique to this test, to find the daemon by its command line.
  std::string name = std::filesystem::path(dir.path()).filename().string() + ".json";
  json::object config{{"max_message_size_kb", 7},
                      {"log_file", dir / "agent.log"},
                      {"security", json::object{{"command_whitelist", json::array{"true"}}}}};
  WriteFile(dir / name, json::serialize(config));
  std::string sock = dir / "agent.sock";
  RunResult r = RunAgentIn(dir.path(), {"--config", name, "--listen", "unix:" + sock});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  DaemonGuard daemon{FindProcess(name)};
  ASSERT_GT(daemon.pid, 0);
  auto limits = [&] {
    CallResult info = AgentClient(sock, std::chrono::seconds(10)).Call("get_agent_info");
    EXPECT_TRUE(info.ok);
    return info.ok ? info.result.at("limits").as_object() : json::object{};
  };
  EXPECT_EQ(limits()["max_message_size_kb"], 7);
  EXPECT_EQ(limits()["command_whitelist_enabled"], true);

  ::kill(daemon.pid, SIGHUP);
  ASSERT_TRUE(WaitForText(dir / "agent.log", "config reloaded", 1))
      << ReadFileText(dir / "agent.log");
  EXPECT_EQ(limits()["max_message_size_kb"], 7);
  EXPECT_EQ(limits()["command_whitelist_enabled"], true);

  // A config file that vanished keeps the running config rather than reverting to defaults.
  std::filesystem::remove(dir / name);
  ::kill(daemon.pid, SIGHUP);
  ASSERT_TRUE(WaitForText(dir / "agent.log", "config reload failed", 1))
      << ReadFileText(dir / "agent.log");
  EXPECT_NE(ReadFileText(dir / "agent.log").find("not found"), std::string::npos);
  EXPECT_EQ(limits()["max_message_size_kb"], 7);
  EXPECT_EQ(limits()["command_whitelist_enabled"], true);
  EXPECT_TRUE(StopDaemon(daemon));
}

// A daemon's stderr is /dev/null: a log_file it cannot open is said by the launcher, and a
// reload naming one it cannot open keeps writing to the old file.
TEST(AgentDaemon, LogFileThatCannotBeOpenedIsReportedAndAReloadKeepsTheOldOne) {
  TempDir dir;
  std::string name = std::filesystem::path(dir.path()).filename().string() + ".json";
  std::string sock = dir / "agent.sock";
  WriteFile(dir / name, json::serialize(json::object{{"log_file", dir / "no-dir/agent.log"}}));
  RunResult r = RunAgentIn(dir.path(), {"--config", dir / name, "--listen", "unix:" + sock});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  {
    DaemonGuard daemon{FindProcess(name)};
    ASSERT_GT(daemon.pid, 0);
    EXPECT_NE(r.err.find("cannot open log file " + (dir / "no-dir/agent.log")), std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("the daemon will log nothing"), std::string::npos) << r.err;
    EXPECT_TRUE(StopDaemon(daemon));
  }

  WriteFile(dir / name, json::serialize(json::object{{"log_file", dir / "agent.log"}}));
  r = RunAgentIn(dir.path(), {"--config", dir / name, "--listen", "unix:" + sock});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  DaemonGuard daemon{FindProcess(name)};
  ASSERT_GT(daemon.pid, 0);
  WriteFile(dir / name, json::serialize(json::object{{"log_file", dir / "no-dir/agent.log"}}));
  ::kill(daemon.pid, SIGHUP);
  ASSERT_TRUE(WaitForText(dir / "agent.log", "config reloaded", 1))
      << ReadFileText(dir / "agent.log");
  EXPECT_NE(ReadFileText(dir / "agent.log").find("still logging to the file used before"),
            std::string::npos)
      << ReadFileText(dir / "agent.log");
  EXPECT_TRUE(StopDaemon(daemon));
  EXPECT_NE(ReadFileText(dir / "agent.log").find("stopped"), std::string::npos)
      << ReadFileText(dir / "agent.log");
}

TEST(AgentDaemon, RelativeListenPathIsCreatedInTheStartDirectory) {
  TempDir dir;
  std::string name = std::filesystem::path(dir.path()).filename().string() + ".sock";
  RunResult r = RunAgentIn(dir.path(), {"--config", "/nonexistent", "--listen", "unix:" + name});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  DaemonGuard daemon{FindProcess(name)};
  ASSERT_GT(daemon.pid, 0);
  if (!std::filesystem::exists(dir / name)) ::unlink(("/" + name).c_str());  // without the fix
  ASSERT_TRUE(std::filesystem::exists(dir / name));
  EXPECT_TRUE(AgentClient(dir / name, std::chrono::seconds(10)).Call("ping").ok);
  EXPECT_TRUE(StopDaemon(daemon));
  EXPECT_FALSE(std::filesystem::exists(dir / name));
}

}  // namespace
}  // namespace kvm::test
