#include "agent/handlers/files/path_policy.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "agent/core/method_table.h"  // WouldBlock
#include "agent/handlers/files/file_io.h"
#include "protocol/errors.h"

namespace kvm::files {
namespace {

// Splits "a/b/c" (already normalized: no empty, "." or ".." parts) at its last '/'.
void SplitLast(const std::string& rel, std::string& parent, std::string& name) {
  size_t slash = rel.rfind('/');
  if (slash == std::string::npos) {
    parent.clear();
    name = rel;
  } else {
    parent = rel.substr(0, slash);
    name = rel.substr(slash + 1);
  }
}

std::string Shorten(std::string_view path) { return ShortForMessage(path); }

[[noreturn]] void ThrowOs(int err, std::string_view what, std::string_view path) {
  if (err == ENOENT) {
    throw RpcError(ErrorCode::kNotFound, "No such file or directory: " + Shorten(path),
                   {{"path", path}});
  }
  if (err == ENOTDIR) {
    throw RpcError(ErrorCode::kNotFound,
                   "A component of the path is not a directory: " + Shorten(path),
                   {{"path", path}});
  }
  throw RpcError(ErrorCode::kIoError,
                 std::string(what) + " failed for " + Shorten(path) + ": " + std::strerror(err),
                 {{"errno", err}, {"detail", std::strerror(err)}, {"path", path}});
}

int SysOpenat2(int dirfd, const char* path, int flags, mode_t mode, uint64_t resolve) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags);
  how.mode = (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0;
  how.resolve = resolve;
  return static_cast<int>(::syscall(SYS_openat2, dirfd, path, &how, sizeof how));
}

}  // namespace

const char* PolicyName(Access access) {
  return access == Access::kRead ? "allowed_read_paths" : "allowed_write_paths";
}

const char* RefusalText(LexicalRefusal why) {
  switch (why) {
    case LexicalRefusal::kNone:
      return "allowed";
    case LexicalRefusal::kEmpty:
      return "empty path";
    case LexicalRefusal::kNotAbsolute:
      return "path is not absolute";
    case LexicalRefusal::kNulByte:
      return "path contains a NUL byte";
    case LexicalRefusal::kDotDot:
      return "'..' components are not accepted";
    case LexicalRefusal::kTooLong:
      return "path is too long";
    case LexicalRefusal::kOutside:
      return "not at or under an allowed entry";
  }
  return "refused";
}

LexicalRefusal NormalizeAbsolute(std::string_view path, std::string& out) {
  out.clear();
  if (path.empty()) return LexicalRefusal::kEmpty;
  if (path.find('\0') != std::string_view::npos) return LexicalRefusal::kNulByte;
  if (path.size() > kMaxPathBytes) return LexicalRefusal::kTooLong;
  if (path[0] != '/') return LexicalRefusal::kNotAbsolute;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t end = path.find('/', i);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(i, end - i);
    i = end;
    if (part.empty() || part == ".") continue;
    if (part == "..") return LexicalRefusal::kDotDot;
    out += '/';
    out += part;
  }
  if (out.empty()) out = "/";
  return LexicalRefusal::kNone;
}

std::vector<std::string> NormalizeEntries(const std::vector<std::string>& entries) {
  std::vector<std::string> out;
  for (const auto& entry : entries) {
    std::string normalized;
    if (NormalizeAbsolute(entry, normalized) == LexicalRefusal::kNone) {
      out.push_back(std::move(normalized));
    }
  }
  return out;
}

LexicalResult CheckLexical(std::string_view path, const std::vector<std::string>& entries) {
  LexicalResult result;
  result.refusal = NormalizeAbsolute(path, result.normalized);
  if (!result.allowed()) return result;
  const std::string& p = result.normalized;
  size_t best_len = 0;
  bool found = false;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& e = entries[i];
    bool under;
    if (e == "/") {
      under = true;
    } else {
      // By components: "/tmpfoo" is not under "/tmp".
      under = p.size() >= e.size() && p.compare(0, e.size(), e) == 0 &&
              (p.size() == e.size() || p[e.size()] == '/');
    }
    if (under && (!found || e.size() > best_len)) {
      found = true;
      best_len = e.size();
      result.entry = i;
    }
  }
  if (!found) {
    result.refusal = LexicalRefusal::kOutside;
    return result;
  }
  const std::string& e = entries[result.entry];
  size_t skip = e == "/" ? 1 : e.size() + 1;
  result.remainder = skip < p.size() ? p.substr(skip) : std::string();
  return result;
}

void ThrowRefused(std::string_view path, Access access, std::string_view why) {
  throw RpcError(ErrorCode::kPermissionDenied,
                 "Path '" + Shorten(path) + "' is not allowed by " + PolicyName(access) + " (" +
                     std::string(why) + ")",
                 {{"policy", PolicyName(access)}, {"path", path}});
}

bool PathPolicy::KernelHasOpenat2() {
  static const bool has = [] {
    int fd = SysOpenat2(AT_FDCWD, ".", O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH);
    if (fd >= 0) {
      ::close(fd);
      return true;
    }
    return errno != ENOSYS && errno != EINVAL && errno != E2BIG && errno != EPERM;
  }();
  return has;
}

PathPolicy::PathPolicy(const std::vector<std::string>& read_entries,
                       const std::vector<std::string>& write_entries, Resolver resolver)
    : read_(NormalizeEntries(read_entries)),
      write_(NormalizeEntries(write_entries)),
      resolver_(resolver) {}

LexicalResult PathPolicy::Check(std::string_view path, Access access) const {
  LexicalResult result = CheckLexical(path, entries(access));
  if (!result.allowed()) ThrowRefused(path, access, RefusalText(result.refusal));
  return result;
}

namespace {

// openat2 with RESOLVE_CACHED (Linux 5.12): EAGAIN instead of reading a directory from the
// disk. Throws WouldBlock for that, and for EINVAL (older kernels do not know the flag; a
// worker repeats the open without it and reports any other EINVAL itself).
int CachedOpenat2(int dirfd, const char* path, int flags, uint64_t resolve) {
  int fd = SysOpenat2(dirfd, path, flags, 0, resolve | RESOLVE_CACHED);
  if (fd < 0 && (errno == EAGAIN || errno == EINVAL || errno == EINTR)) throw WouldBlock();
  return fd;
}

// Whether a symlink met on an allowed entry's path could have been planted or swapped by an
// unprivileged user: only root (or the agent's user) may own its directory, and that directory
// must not be writable by others, unless it is sticky (/tmp) and the link is root's (or ours).
bool LinkIsTrusted(const struct stat& dir, const struct stat& link) {
  auto ours = [](uid_t uid) { return uid == 0 || uid == ::geteuid(); };
  if (!ours(dir.st_uid)) return false;
  if (!(dir.st_mode & (S_IWGRP | S_IWOTH))) return true;
  return (dir.st_mode & S_ISVTX) && ours(link.st_uid);
}

// Opens an allowed entry (or its parent): trusted config, so symlinks on its path are
// followed (/var/run -> /run), but only trusted ones (LinkIsTrusted), one component at a time
// from pinned descriptors, so that a link swapped in at any moment is either seen and judged
// or not followed at all. Returns -1 with errno; an untrusted link sets `untrusted_link` to
// the path where it was met. With openat2 only entry paths with a symlink come here (one
// openat2 without symlinks is tried first); `cached_only` keeps it off the disk (WouldBlock).
int WalkTrustedPath(const std::string& path, int flags, mode_t mode, bool cached_only,
                    std::string& untrusted_link) {
  // With cached_only every lookup goes through the dentry cache alone (throws WouldBlock).
  auto open_at = [&](int at, const char* name, int how, mode_t m) {
    return cached_only ? CachedOpenat2(at, name, how, 0) : ::openat(at, name, how, m);
  };
  std::vector<std::string> todo;  // components still to walk, last one first
  auto push_path = [&](std::string_view p) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= p.size()) {
      size_t slash = p.find('/', start);
      if (slash == std::string_view::npos) slash = p.size();
      if (slash > start) parts.emplace_back(p.substr(start, slash - start));
      start = slash + 1;
    }
    todo.insert(todo.end(), parts.rbegin(), parts.rend());
  };
  auto open_root = [] { return UniqueFd(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)); };
  UniqueFd dir = open_root();
  std::string walked;  // for the message: the path as followed so far
  struct stat dir_st;
  if (!dir || ::fstat(dir.get(), &dir_st) != 0) return -1;
  push_path(path);
  for (int links = 0; !todo.empty();) {
    std::string name = std::move(todo.back());
    todo.pop_back();
    if (name == ".") continue;
    bool last = todo.empty();
    if (name == "..") {  // in a link's target: the parent of a pinned directory, no name lookup
      UniqueFd up(open_at(dir.get(), "..", O_PATH | O_DIRECTORY | O_CLOEXEC, 0));
      if (!up || ::fstat(up.get(), &dir_st) != 0) return -1;
      dir = std::move(up);
      walked += "/..";
      continue;
    }
    UniqueFd pin(open_at(dir.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC, 0));
    if (!pin) {
      if (last && errno == ENOENT && (flags & O_CREAT)) {
        return open_at(dir.get(), name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
      }
      return -1;
    }
    struct stat st;
    if (::fstat(pin.get(), &st) != 0) return -1;
    walked += "/" + name;
    if (S_ISLNK(st.st_mode)) {
      if (!LinkIsTrusted(dir_st, st)) {
        untrusted_link = walked;
        errno = EPERM;
        return -1;
      }
      if (++links > 40) {
        errno = ELOOP;
        return -1;
      }
      char target[4096];
      ssize_t n = ::readlinkat(pin.get(), "", target, sizeof target);
      if (n <= 0 || n == static_cast<ssize_t>(sizeof target)) {
        if (n >= 0) errno = ENAMETOOLONG;
        return -1;
      }
      std::string_view t(target, static_cast<size_t>(n));
      if (t.front() == '/') {
        dir = open_root();
        if (!dir || ::fstat(dir.get(), &dir_st) != 0) return -1;
      }
      push_path(t);
      continue;
    }
    if (last) {
      // The same name again, now with the real flags; replaced by a link meanwhile, it fails.
      return open_at(dir.get(), name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
    }
    if (!S_ISDIR(st.st_mode)) {
      errno = ENOTDIR;
      return -1;
    }
    dir = std::move(pin);
    dir_st = st;
  }
  // Ended on a directory: "..", ".", a link to "/" or to "x/.": open it with the real flags.
  return open_at(dir.get(), ".", (flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL)) | O_CLOEXEC, 0);
}

}  // namespace

// An allowed entry, or with `cached_only` the same through the dentry cache alone. A path
// without symlinks is one openat2 (what it reaches is there, nothing redirected it); with
// one, the walk above judges each link.
UniqueFd PathPolicy::OpenEntryPath(const std::string& entry, int flags, mode_t mode, Access access,
                                   std::string_view path, bool cached_only) const {
  // The entry's own last component is followed too when it is a trusted link (/var/run,
  // /etc/os-release -> ../usr/lib/os-release): no O_NOFOLLOW, which would open the link.
  flags = (flags & ~O_NOFOLLOW) | O_CLOEXEC;
  if (resolver_ == Resolver::kOpenat2) {
    const uint64_t resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = cached_only ? CachedOpenat2(AT_FDCWD, entry.c_str(), flags, resolve)
                         : SysOpenat2(AT_FDCWD, entry.c_str(), flags, mode, resolve);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != ELOOP && errno != EAGAIN && errno != EINTR) ThrowOs(errno, "open", path);
  } else if (cached_only) {
    throw WouldBlock();  // no cached-only lookups without openat2
  }
  std::string untrusted_link;
  int fd = WalkTrustedPath(entry, flags, mode, cached_only, untrusted_link);
  if (!untrusted_link.empty()) {
    ThrowRefused(path, access,
                 "the allowed entry's path goes through a symlink another user could replace (" +
                     Shorten(untrusted_link) + ")");
  }
  if (fd < 0) ThrowOs(errno, "open", path);
  return UniqueFd(fd);
}

UniqueFd PathPolicy::OpenEntryDir(const std::string& entry, Access access, std::string_view path,
                                  bool cached_only) const {
  return OpenEntryPath(entry, O_RDONLY | O_DIRECTORY, 0, access, path, cached_only);
}

UniqueFd PathPolicy::OpenBeneath(int root, const std::string& rel, int flags, mode_t mode,
                                 Access access, std::string_view path, bool cached_only) const {
  flags |= O_CLOEXEC;
  auto classify = [&](int err) -> UniqueFd {
    if (err == ELOOP || err == EXDEV) {
      ThrowRefused(path, access, "a symlink or magic link below the allowed entry");
    }
    ThrowOs(err, "open", path);
  };
  if (resolver_ == Resolver::kOpenat2) {
    // No O_NOFOLLOW here (except for O_PATH, which describes a link itself): with it the
    // kernel answers ENOTDIR rather than ELOOP for a trailing symlink opened O_DIRECTORY;
    // RESOLVE_NO_SYMLINKS refuses trailing symlinks by itself.
    flags = (flags & O_PATH) ? (flags | O_NOFOLLOW) : (flags & ~O_NOFOLLOW);
    const uint64_t resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    if (cached_only) {
      int fd = CachedOpenat2(root, rel.c_str(), flags, resolve);
      return fd >= 0 ? UniqueFd(fd) : classify(errno);
    }
    for (int attempt = 0;; ++attempt) {
      int fd = SysOpenat2(root, rel.c_str(), flags, mode, resolve);
      if (fd >= 0) return UniqueFd(fd);
      if ((errno == EAGAIN || errno == EINTR) && attempt < 16) continue;  // rename race: retry
      return classify(errno);
    }
  }
  // Component by component. Each directory is pinned with O_PATH|O_NOFOLLOW and checked by
  // fstat on that very descriptor, so a swap between steps cannot redirect the walk.
  auto pin_dir = [&](int at, const std::string& part) -> UniqueFd {
    UniqueFd fd(::openat(at, part.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) classify(errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) classify(errno);
    if (S_ISLNK(st.st_mode)) classify(ELOOP);
    if (!S_ISDIR(st.st_mode)) classify(ENOTDIR);
    return fd;
  };
  UniqueFd current;
  int at = root;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    std::string part =
        rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (slash == std::string::npos) {
      if (flags & O_DIRECTORY) {
        UniqueFd dir = pin_dir(at, part);
        int fd = ::openat(dir.get(), ".", flags & ~O_NOFOLLOW, mode);
        if (fd < 0) return classify(errno);
        return UniqueFd(fd);
      }
      int fd = ::openat(at, part.c_str(), flags | O_NOFOLLOW, mode);
      if (fd < 0) return classify(errno);
      return UniqueFd(fd);
    }
    current = pin_dir(at, part);
    at = current.get();
    start = slash + 1;
  }
}

UniqueFd PathPolicy::Open(std::string_view path, Access access, int flags, mode_t mode) const {
  return OpenChecked(path, access, flags, mode, false);
}

UniqueFd PathPolicy::OpenCached(std::string_view path, Access access, int flags) const {
  // The walk without openat2 has no cached-only mode, and creating or truncating may write.
  if (resolver_ != Resolver::kOpenat2 || (flags & (O_CREAT | O_TRUNC))) throw WouldBlock();
  return OpenChecked(path, access, flags, 0, true);
}

UniqueFd PathPolicy::OpenChecked(std::string_view path, Access access, int flags, mode_t mode,
                                 bool cached_only) const {
  LexicalResult lex = Check(path, access);
  const std::string& entry = entries(access)[lex.entry];
  if (lex.remainder.empty()) {
    // The entry itself (a directory or a single-file entry such as /etc/hostname).
    return OpenEntryPath(entry, flags, mode, access, path, cached_only);
  }
  if (resolver_ == Resolver::kOpenat2) {
    // First one openat2 of the whole normalized path (no "..", refused lexically) with no
    // symlink followed anywhere: what it opens is reached through real directories only, down
    // the entry's path and on below it, which is what the entry directory + RESOLVE_BENEATH
    // below reaches, in one syscall instead of three (open entry, lstat entry, close). A
    // symlink anywhere (also in the entry's own path, which the config may name through a
    // link) answers ELOOP, and the two-step open decides with its own checks.
    int one_flags =
        (flags & O_PATH) ? (flags | O_NOFOLLOW | O_CLOEXEC) : ((flags & ~O_NOFOLLOW) | O_CLOEXEC);
    const uint64_t resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = cached_only ? CachedOpenat2(AT_FDCWD, lex.normalized.c_str(), one_flags, resolve)
                         : SysOpenat2(AT_FDCWD, lex.normalized.c_str(), one_flags, mode, resolve);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != ELOOP && errno != EAGAIN && errno != EINTR) ThrowOs(errno, "open", path);
  }
  UniqueFd root = OpenEntryDir(entry, access, path, cached_only);
  return OpenBeneath(root.get(), lex.remainder, flags, mode, access, path, cached_only);
}

PathPolicy::Parent PathPolicy::OpenParent(std::string_view path, Access access) const {
  LexicalResult lex = Check(path, access);
  const std::string& entry = entries(access)[lex.entry];
  Parent parent;
  parent.normalized = lex.normalized;
  if (lex.remainder.empty()) {
    bool is_dir = entry == "/";
    try {  // through trusted links only, as any use of the entry
      UniqueFd e = OpenEntryPath(entry, O_PATH, 0, access, path, false);
      struct stat st;
      is_dir = is_dir || (::fstat(e.get(), &st) == 0 && S_ISDIR(st.st_mode));
    } catch (const RpcError& e) {
      if (e.code() != ErrorCode::kNotFound) throw;  // missing: a single-file entry to create
    }
    if (is_dir) {
      ThrowRefused(path, access, "an allowed directory entry itself cannot be replaced or removed");
    }
    std::string dir;
    SplitLast(entry.substr(1), dir, parent.name);
    dir = "/" + dir;
    parent.dir = OpenEntryPath(dir, O_RDONLY | O_DIRECTORY, 0, access, path, false);
    return parent;
  }
  UniqueFd root = OpenEntryDir(entry, access, path);
  std::string dir_rel;
  SplitLast(lex.remainder, dir_rel, parent.name);
  if (dir_rel.empty()) {
    parent.dir = std::move(root);
  } else {
    parent.dir = OpenBeneath(root.get(), dir_rel, O_RDONLY | O_DIRECTORY, 0, access, path);
  }
  return parent;
}

}  // namespace kvm::files
