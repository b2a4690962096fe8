// Text from the guest on the host's terminal: names, command lines and messages come from the
// guest, where any local user can put escape sequences in them (a process's argv, a file name).
#pragma once

#include <string>
#include <string_view>

namespace kvm {

// `text` with every control character shown as '?', as ps(1) and ls(1) do on a terminal: C0
// (bytes below 0x20), DEL and C1 (U+0080-U+009F, which some terminals obey as controls; in
// UTF-8 the bytes C2 80-C2 9F). Everything else, other UTF-8 included, is kept as is.
std::string ForTerminal(std::string_view text);

}  // namespace kvm
