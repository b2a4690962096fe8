// Builds fixture trees (a fake /proc, /sys, /etc under a temp dir) for the module's unit tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/support/agent_process.h"

namespace kvm::sysinfo::testing {

// Writes root + path, creating parent directories.
inline void Put(const std::string& root, const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(root + path).parent_path());
  kvm::test::WriteFile(root + path, content);
}

// Creates root + link_path as a symlink to `target` (relative, as sysfs does).
inline void Link(const std::string& root, const std::string& link_path, const std::string& target) {
  std::filesystem::create_directories(std::filesystem::path(root + link_path).parent_path());
  std::filesystem::create_symlink(target, root + link_path);
}

inline void Dir(const std::string& root, const std::string& path) {
  std::filesystem::create_directories(root + path);
}

}  // namespace kvm::sysinfo::testing
