// Shared helpers of the system-information module: where the data comes from (a root prefix
// so tests can point /proc, /sys, /etc, /run at fixtures) and small text utilities.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

// Kernel-provided names (paths, interface names, utmp fields) need not be UTF-8 and json::string
// values must be: the handlers pass them through ToValidUtf8.
#include "protocol/utf8.h"

namespace kvm::sysinfo {

// Every file this module reads is `root + "/proc/..."` etc. Empty root = the live system.
struct SystemRoot {
  std::string root;
  std::string Path(std::string_view absolute) const { return root + std::string(absolute); }
};

// Reads a small proc/sys/etc file under the root; nullopt when it does not exist or fails.
std::optional<std::string> ReadText(const SystemRoot& sys, std::string_view absolute,
                                    size_t max_bytes = 1 << 20);
// First line of a file, trimmed of whitespace and NULs (sysfs attributes).
std::optional<std::string> ReadAttr(const SystemRoot& sys, std::string_view absolute);

std::string_view Trim(std::string_view s);
std::vector<std::string_view> SplitFields(std::string_view line);  // on runs of blanks
std::vector<std::string_view> SplitLines(std::string_view text);
std::optional<uint64_t> ParseU64(std::string_view s);
std::optional<double> ParseDouble(std::string_view s);

// Parses a CPU list such as "0-3,5,7-8" (sysfs online/present); nullopt on bad syntax.
std::optional<std::vector<unsigned>> ParseCpuList(std::string_view text);

// The target of a symlink resolved lexically against the link's own directory, kept inside
// the root prefix (sysfs links are relative: ../../devices/...). nullopt when not a link.
std::optional<std::string> ResolveLink(const std::string& link_path);
// Collapses "." and ".." components of an absolute path, without touching the filesystem.
std::string NormalizePath(std::string_view path);

}  // namespace kvm::sysinfo
