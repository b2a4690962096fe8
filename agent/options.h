// Command-line flags of kvmmanager-agent.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace kvm {

struct AgentOptions {
  bool foreground = false;
  std::optional<std::string> log_level;
  std::optional<std::string> device;
  std::string config_path;
  std::vector<std::string> listen;
  bool check_config = false;
};

// Exit code and text when the flags say to stop at once (--help, --version, bad usage).
struct OptionsExit {
  int code;
  std::string text;  // printed to stdout when code is 0, else to stderr
};

// getopt_long rather than CLI11: CLI11's iostreams add ~0.8 MB to the static agent (measured).
std::optional<OptionsExit> ParseAgentOptions(int argc, char** argv, AgentOptions& options);

std::string AgentUsage();

// Rewrites relative --config, --device and --listen unix: paths against the current directory,
// so they keep naming the same files after the daemon's chdir("/") (and on SIGHUP reloads).
// Returns an error text, empty on success.
std::string MakeOptionPathsAbsolute(AgentOptions& options);

}  // namespace kvm
