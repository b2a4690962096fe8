// The agent's configuration: every key of /etc/kvmmanager-agent/config.json, with the seed's
// defaults.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvm {

inline constexpr const char* kDefaultConfigPath = "/etc/kvmmanager-agent/config.json";

struct SecurityConfig {
  std::vector<std::string> allowed_read_paths{"/tmp", "/var/log", "/etc/hostname",
                                              "/etc/os-release"};
  std::vector<std::string> allowed_write_paths{"/tmp/kvmmanager"};
  std::optional<std::vector<std::string>> command_whitelist;  // nullopt: every command allowed
  int64_t max_file_size_mb = 10;
  int64_t max_command_timeout_seconds = 300;
};

struct Config {
  std::string version = "1.0.0";
  std::string log_level = "info";
  std::string log_file = "/var/log/kvmmanager-agent.log";  // "" or null: no log file
  std::string channel_name = "org.kvmmanager.agent.0";
  int64_t max_message_size_kb = 64;
  int64_t connection_retry_seconds = 5;
  int64_t request_timeout_seconds = 30;
  int64_t max_concurrent_requests = 10;
  SecurityConfig security;

  size_t max_message_bytes() const { return static_cast<size_t>(max_message_size_kb) * 1024; }
  uint64_t max_file_bytes() const { return static_cast<uint64_t>(security.max_file_size_mb) << 20; }
};

// A config that cannot be used; what() names the key and what was expected.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadedConfig {
  Config config;
  bool file_found = false;
  std::vector<std::string> warnings;  // e.g. unknown keys; the caller logs them
};

// Parses a config text; keys absent from it keep their defaults.
LoadedConfig ParseConfig(std::string_view text);
// Reads and parses a file; a missing file gives the defaults (file_found false).
LoadedConfig LoadConfigFile(const std::string& path);

// The config as JSON, as --check-config prints it.
std::string ConfigToJson(const Config& config);

bool IsValidLogLevel(std::string_view level);

}  // namespace kvm
