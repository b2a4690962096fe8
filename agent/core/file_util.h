// Small whole-file reads without iostreams (which would add ~0.5 MB to the static agent).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "agent/core/unique_fd.h"

namespace kvm {

// Reads at most `max_bytes` of a file (e.g. /proc or /sys entries, configs). On failure returns
// nullopt and sets *error_number (if given) to errno.
std::optional<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 1 << 20,
                                         int* error_number = nullptr);

// Re-reads a kernel file (/proc, /sys) from offset 0 through `fd`, which is opened on first
// use and kept: a file polled on every request costs one pread instead of open+read+close.
// On failure closes `fd` (the next call reopens) and returns nullopt.
std::optional<std::string> RereadKernelFile(const std::string& path, UniqueFd& fd,
                                            size_t max_bytes = 1 << 20);

}  // namespace kvm
