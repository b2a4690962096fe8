// UTF-8 checks shared by the agent and the ctl: JSON text must be UTF-8, while file names,
// process names and file contents from the system need not be.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvm {

// Length of the longest prefix of `data` that is valid UTF-8 (no overlong forms, no
// surrogates, nothing above U+10FFFF). When it stops at a sequence that is valid so far but
// cut by the end of `data`, *truncated (if given) is set.
size_t ValidUtf8Prefix(std::string_view data, bool* truncated = nullptr);

bool IsValidUtf8(std::string_view data);

// `text` with every byte that does not belong to a valid sequence replaced by U+FFFD.
std::string ToValidUtf8(std::string_view text);

}  // namespace kvm
