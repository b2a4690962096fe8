// Test support: run the real kvmmanager-agent binary on a private unix socket, and talk to it.
#pragma once

#include <sys/types.h>

#include <boost/json.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "ctl/agent_client.h"

namespace kvm::test {

// A fresh temporary directory, removed with everything in it at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& content);
std::string ReadFileText(const std::string& path);

// The result of running a program to completion.
struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out;
  std::string err;
};
// Runs argv (no shell) with an optional stdin text; kills it after `timeout`.
RunResult RunProgram(const std::vector<std::string>& argv, const std::string& input = "",
                     std::chrono::milliseconds timeout = std::chrono::seconds(30));

// A program started in the background with default SIGINT/SIGTERM/SIGHUP dispositions (a test
// runner started in the background of a script ignores SIGINT, and so would the child) and its
// output discarded, for tests that signal it mid-way. SIGKILLed and reaped at destruction.
class BackgroundProcess {
 public:
  explicit BackgroundProcess(const std::vector<std::string>& argv);
  ~BackgroundProcess();
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;
  pid_t pid() const { return pid_; }  // -1 if it could not be started
  // Its exit code (128+N if signal N killed it) once it ends within `limit`; -1 otherwise.
  int Wait(std::chrono::milliseconds limit);

 private:
  pid_t pid_ = -1;
};

// The agent under test. Writes `config_json` (or a test default that confines files to the
// temp dir) and starts `kvmmanager-agent --foreground --listen unix:<dir>/agent.sock`.
class AgentProcess {
 public:
  struct Options {
    std::string config_json;              // empty: DefaultTestConfig()
    std::vector<std::string> extra_args;  // appended to the command line
    bool listen_unix = true;
    bool wait_until_connectable = true;  // false: the constructor returns right after spawning
    std::string log_level = "debug";
  };
  AgentProcess();  // default options
  explicit AgentProcess(Options options);
  ~AgentProcess();  // SIGKILL if still running

  // A config whose read/write paths are the temp dir's "sandbox" folder.
  std::string DefaultTestConfig() const;

  const std::string& socket_path() const { return socket_path_; }
  const std::string& config_path() const { return config_path_; }
  const TempDir& dir() const { return dir_; }
  std::string sandbox() const { return dir_ / "sandbox"; }
  pid_t pid() const { return pid_; }

  std::unique_ptr<AgentClient> Connect(
      std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;
  // One raw line in, one raw line out, on a fresh connection.
  std::string RoundTrip(const std::string& line) const;
  // Calls a method on a fresh connection.
  CallResult Call(const std::string& method, const boost::json::object& params = {}) const;

  void Signal(int signo) const;
  // Waits for exit; returns the exit status (or -signal), or nullopt on timeout.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout);
  std::string Stderr() const;  // what the agent logged so far

 private:
  void Start(Options options);

  TempDir dir_;
  std::string socket_path_;
  std::string config_path_;
  std::string stderr_path_;
  pid_t pid_ = -1;
  bool exited_ = false;
};

// Parses a reply line; fails the test (and returns null) if it is not JSON.
boost::json::value ParseJson(const std::string& text);

}  // namespace kvm::test
