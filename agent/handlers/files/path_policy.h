// Which paths the host may touch, and opening them so that the check and the open are one step.
//
// A path is allowed when its lexical form (absolute, no NUL, no "..", "//" and "." collapsed) is
// at or under an entry of allowed_read_paths / allowed_write_paths, by whole components. The part
// below the entry is then opened relative to a descriptor of the entry itself, refusing every
// symlink and magic link on the way (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
// RESOLVE_NO_MAGICLINKS, or a component-by-component O_NOFOLLOW walk on kernels without openat2).
// A directory swapped for a symlink at any moment therefore fails the open instead of escaping.
// The entries themselves are trusted configuration and are resolved normally.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "agent/core/unique_fd.h"

namespace kvm::files {

enum class Access { kRead, kWrite };
// "allowed_read_paths" / "allowed_write_paths": data.policy of a refusal.
const char* PolicyName(Access access);

enum class LexicalRefusal {
  kNone,
  kEmpty,
  kNotAbsolute,
  kNulByte,
  kDotDot,
  kTooLong,
  kOutside,  // not at or under any entry
};
const char* RefusalText(LexicalRefusal why);

struct LexicalResult {
  LexicalRefusal refusal = LexicalRefusal::kNone;
  size_t entry = 0;        // index of the (longest) matching entry
  std::string normalized;  // "/a/b", no trailing slash ("/" for the root)
  std::string remainder;   // below the entry, "x/y"; empty when the path is the entry itself
  bool allowed() const { return refusal == LexicalRefusal::kNone; }
};

inline constexpr size_t kMaxPathBytes = 4095;

// Lexical normal form of an absolute path, or a refusal reason. Pure; the fuzzing entry point.
LexicalRefusal NormalizeAbsolute(std::string_view path, std::string& out);
// Pure: matches `path` against entries that are already normalized (see NormalizeEntries).
LexicalResult CheckLexical(std::string_view path, const std::vector<std::string>& entries);
// Normalizes config entries; unusable ones (relative, "..") are dropped.
std::vector<std::string> NormalizeEntries(const std::vector<std::string>& entries);

enum class Resolver { kOpenat2, kWalk };

// Thrown as RpcError by the Open* functions:
//  -32000 permission_denied (data.policy, data.path) for any refusal: lexical, symlink, magic
//         link, escape. Lexical refusals happen before any system call, so they say nothing about
//         whether the path exists.
//  -32001 not_found when a component below an allowed entry does not exist.
//  -32005 io_error for other OS failures.
class PathPolicy {
 public:
  PathPolicy(const std::vector<std::string>& read_entries,
             const std::vector<std::string>& write_entries, Resolver resolver);

  // The lexical check alone; throws the permission error on refusal.
  LexicalResult Check(std::string_view path, Access access) const;

  // Opens the path itself (O_NOFOLLOW and O_CLOEXEC are added). With O_CREAT the final
  // component is created inside the verified parent directory.
  UniqueFd Open(std::string_view path, Access access, int flags, mode_t mode = 0) const;
  // Open for the I/O thread: every lookup is served from the dentry cache (openat2
  // RESOLVE_CACHED) or it throws WouldBlock, as it does without openat2 and for O_CREAT or
  // O_TRUNC. Same checks and errors as Open.
  UniqueFd OpenCached(std::string_view path, Access access, int flags) const;

  // The verified directory holding the path's final component, for *at() calls on `name`.
  // Refuses the allowed entry itself when it is a directory (it has no parent we may touch).
  struct Parent {
    UniqueFd dir;
    std::string name;
    std::string normalized;
  };
  Parent OpenParent(std::string_view path, Access access) const;

  // An allowed entry itself (or its parent), following only symlinks no other user could
  // have planted (see path_policy.cc); refusals and errors name `path`, the request's.
  UniqueFd OpenEntryPath(const std::string& entry, int flags, mode_t mode, Access access,
                         std::string_view path, bool cached_only) const;

  Resolver resolver() const { return resolver_; }
  const std::vector<std::string>& entries(Access access) const {
    return access == Access::kRead ? read_ : write_;
  }

  // Whether this kernel has openat2 (checked once per process).
  static bool KernelHasOpenat2();

 private:
  // Open and OpenCached (`cached_only`) after their own checks.
  UniqueFd OpenChecked(std::string_view path, Access access, int flags, mode_t mode,
                       bool cached_only) const;
  UniqueFd OpenEntryDir(const std::string& entry, Access access, std::string_view path,
                        bool cached_only = false) const;
  // Opens `rel` (components without "..", non-empty) beneath `root`.
  UniqueFd OpenBeneath(int root, const std::string& rel, int flags, mode_t mode, Access access,
                       std::string_view path, bool cached_only = false) const;

  std::vector<std::string> read_;
  std::vector<std::string> write_;
  Resolver resolver_;
};

// Throws the documented permission error for `path` under `access`'s policy.
[[noreturn]] void ThrowRefused(std::string_view path, Access access, std::string_view why);

}  // namespace kvm::files
