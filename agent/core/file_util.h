// Small whole-file reads without iostreams (which would add ~0.5 MB to the static agent).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace kvm {

// Reads at most `max_bytes` of a file (e.g. /proc or /sys entries, configs). On failure returns
// nullopt and sets *error_number (if given) to errno.
std::optional<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 1 << 20,
                                         int* error_number = nullptr);

}  // namespace kvm
