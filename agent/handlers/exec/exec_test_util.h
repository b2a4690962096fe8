// Helpers shared by the exec module's tests that drive the real agent.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "protocol/base64.h"
#include "tests/support/agent_process.h"

namespace kvm::exec::testing {

namespace json = boost::json;

inline std::string Slurp(const std::string& path) {
  std::string text = test::ReadFileText(path);
  return text;
}

// Pids whose command line contains `marker` (as one argument or part of one).
inline std::vector<pid_t> PidsWithMarker(const std::string& marker) {
  std::vector<pid_t> pids;
  DIR* dir = ::opendir("/proc");
  while (dirent* e = ::readdir(dir)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0 || pid == ::getpid()) continue;
    std::string cmdline = Slurp("/proc/" + std::to_string(pid) + "/cmdline");
    for (char& c : cmdline)
      if (c == '\0') c = ' ';
    if (cmdline.find(marker) != std::string::npos) pids.push_back(pid);
  }
  ::closedir(dir);
  return pids;
}

// Waits up to `limit` for no process with `marker` to exist; returns what is left.
inline std::vector<pid_t> WaitGone(const std::string& marker,
                                   std::chrono::milliseconds limit = std::chrono::seconds(1)) {
  auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto left = PidsWithMarker(marker);
    if (left.empty() || std::chrono::steady_clock::now() >= until) return left;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Zombie children of `parent` (a zombie under the agent means someone forgot to reap).
inline std::vector<pid_t> ZombieChildrenOf(pid_t parent) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  while (dirent* e = ::readdir(dir)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos || close + 4 >= stat.size()) continue;
    char state = stat[close + 2];
    pid_t ppid = static_cast<pid_t>(std::atoi(stat.c_str() + close + 4));
    if (state == 'Z' && ppid == parent) out.push_back(pid);
  }
  ::closedir(dir);
  return out;
}

// A field of /proc/PID/status in kB (VmRSS, VmHWM).
inline int64_t StatusKb(pid_t pid, const std::string& field) {
  std::string text = Slurp("/proc/" + std::to_string(pid) + "/status");
  size_t at = text.find(field + ":");
  if (at == std::string::npos) return -1;
  return std::atoll(text.c_str() + at + field.size() + 1);
}

// A complete agent config for exec tests, with `top` and `security` overriding the defaults.
inline std::string MakeConfig(const json::object& top = {}, const json::object& security = {}) {
  json::object sec{{"allowed_read_paths", json::array{"/tmp"}},
                   {"allowed_write_paths", json::array{"/tmp"}},
                   {"command_whitelist", nullptr},
                   {"max_file_size_mb", 10},
                   {"max_command_timeout_seconds", 60}};
  for (const auto& [k, v] : security) sec[k] = v;
  json::object config{{"log_level", "debug"},
                      {"log_file", nullptr},
                      {"max_message_size_kb", 64},
                      {"request_timeout_seconds", 30},
                      {"max_concurrent_requests", 10}};
  for (const auto& [k, v] : top) config[k] = v;
  config["security"] = std::move(sec);
  return json::serialize(config);
}

inline test::AgentProcess::Options WithConfig(const json::object& top,
                                              const json::object& security = {}) {
  test::AgentProcess::Options o;
  o.config_json = MakeConfig(top, security);
  return o;
}

// The real agent, answering: waits until a ping succeeds (the socket file appears at bind(),
// a moment before listen()).
class ReadyAgent : public test::AgentProcess {
 public:
  ReadyAgent() : ReadyAgent(Options{}) {}
  explicit ReadyAgent(Options options) : AgentProcess(std::move(options)) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      try {
        if (Call("ping").ok) return;
      } catch (const ClientError&) {
        if (std::chrono::steady_clock::now() >= until) throw;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
};

inline std::string Text(const json::value& result, const char* stream) {
  const auto& obj = result.as_object();
  std::string enc = std::string(stream) + "_encoding";
  std::string value(obj.at(stream).as_string());
  if (obj.at(enc).as_string() == "base64") {
    std::string bytes;
    EXPECT_TRUE(Base64Decode(value, bytes));
    return bytes;
  }
  return value;
}

inline std::string Kind(const CallResult& r) {
  if (!r.error_data.is_object()) return "";
  auto* k = r.error_data.as_object().if_contains("kind");
  return k && k->is_string() ? std::string(k->as_string()) : "";
}

inline std::string Policy(const CallResult& r) {
  if (!r.error_data.is_object()) return "";
  auto* k = r.error_data.as_object().if_contains("policy");
  return k && k->is_string() ? std::string(k->as_string()) : "";
}

}  // namespace kvm::exec::testing
