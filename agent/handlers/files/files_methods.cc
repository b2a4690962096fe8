// file_read, file_write, file_stat, file_list, file_delete, file_mkdir and upload sessions.
// Every path goes through PathPolicy, which checks and opens in one step.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/handlers/files/file_io.h"
#include "agent/core/message_limits.h"
#include "agent/handlers/files/path_policy.h"
#include "agent/handlers/files/sha256.h"
#include "agent/handlers/register_all.h"
#include "protocol/base64.h"
#include "protocol/json_write.h"
#include "protocol/utf8.h"
#include "protocol/errors.h"
#include "protocol/params.h"

namespace kvm {
namespace json = boost::json;
using files::Access;
using files::PathPolicy;
using Clock = std::chrono::steady_clock;

namespace {

enum class Encoding { kBase64, kUtf8 };
enum class WriteMode { kOverwrite, kAppend, kCreateNew };

constexpr size_t kMaxUploadSessions = 32;
constexpr size_t kMaxListEntries = 100000;
constexpr size_t kSweepMaxEntries = 100000;
constexpr uint64_t kWritebackBytes = 1 << 20;  // upload bytes between writeback kicks
// A begin that finds the disk full takes back the space reserved by sessions idle this long:
// a live client sends its chunks milliseconds apart; one this quiet has most likely gone.
constexpr auto kReservationIdle = std::chrono::seconds(2);

struct UploadSession {
  std::mutex mu;
  std::string path;  // normalized
  std::string name;
  UniqueFd dir;
  std::unique_ptr<files::PendingFile> file;
  bool replace = true;
  std::optional<mode_t> permissions;
  std::optional<uint64_t> expected_size;
  uint64_t end = 0;
  Sha256 hash;
  uint64_t hashed = 0;                   // bytes [0, hashed) are in `hash`
  std::map<uint64_t, uint64_t> waiting;  // chunks past a gap: offset -> length
  bool in_order = true;                  // false once a hashed range was rewritten
  uint64_t unsynced = 0;                 // bytes written since writeback was last started
  Clock::time_point last_used;
};

class UploadStore {
 public:
  explicit UploadStore(std::chrono::seconds idle) : idle_(idle) {
    reaper_ = std::thread([this] { ReapLoop(); });
  }
  ~UploadStore() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    reaper_.join();
  }
  UploadStore(const UploadStore&) = delete;
  UploadStore& operator=(const UploadStore&) = delete;
  std::chrono::seconds idle() const { return idle_; }

  std::string Add(std::shared_ptr<UploadSession> session) {
    std::lock_guard lock(mu_);
    ExpireLocked();
    if (sessions_.size() >= kMaxUploadSessions) {
      throw RpcError(ErrorCode::kBusy, "Too many open upload sessions; commit or abort some first",
                     {{"limit", kMaxUploadSessions}});
    }
    std::string handle = "upl-" + files::RandomHex();
    session->last_used = Clock::now();
    sessions_[handle] = std::move(session);
    cv_.notify_all();  // the reaper may have been waiting with no session to watch
    return handle;
  }
  // Finds (and with `take`, removes) a session; throws not_found.
  std::shared_ptr<UploadSession> Get(const std::string& handle, bool take) {
    std::lock_guard lock(mu_);
    ExpireLocked();
    auto it = sessions_.find(handle);
    if (it == sessions_.end()) {
      throw RpcError(ErrorCode::kNotFound,
                     "No upload session " + files::ShortForMessage(handle, 64) +
                         " (unknown, committed, aborted or expired)",
                     {{"handle", handle}});
    }
    auto session = it->second;
    session->last_used = Clock::now();
    if (take) sessions_.erase(it);
    return session;
  }

  // Gives back the disk space reserved (beyond what was written) by sessions idle for
  // kReservationIdle; a session busy with a chunk is left alone. Returns how many released.
  size_t ReleaseIdleReservations() {
    std::lock_guard lock(mu_);
    auto now = Clock::now();
    size_t released = 0;
    for (auto& [handle, session] : sessions_) {
      if (now - session->last_used < kReservationIdle || !session->expected_size) continue;
      std::unique_lock busy(session->mu, std::try_to_lock);
      if (!busy || !session->file) continue;
      struct stat st;
      // Truncating to the current size frees the blocks reserved past it (KEEP_SIZE).
      if (::fstat(session->file->fd(), &st) == 0 &&
          ::ftruncate(session->file->fd(), st.st_size) == 0)
        ++released;
    }
    return released;
  }

 private:
  // Sessions whose client went away without an abort (killed, connection lost) go idle_ after
  // their last call, temp file and reserved space with them, whether or not any other upload
  // call comes by. With no session open the thread sleeps without timeouts (no wakeups).
  void ReapLoop() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      if (sessions_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto oldest = Clock::time_point::max();
      for (const auto& [handle, session] : sessions_) oldest = std::min(oldest, session->last_used);
      if (cv_.wait_until(lock, oldest + idle_ + std::chrono::milliseconds(1)) ==
          std::cv_status::no_timeout) {
        continue;
      }
      std::vector<std::shared_ptr<UploadSession>> gone;
      auto now = Clock::now();
      for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (now - it->second->last_used > idle_) {
          gone.push_back(std::move(it->second));
          it = sessions_.erase(it);
        } else {
          ++it;
        }
      }
      lock.unlock();
      gone.clear();  // closes and removes the temp files outside the lock
      lock.lock();
    }
  }

  // Also checked on every upload call, so an expired handle never works.
  void ExpireLocked() {
    auto now = Clock::now();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second->last_used > idle_) {
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::chrono::seconds idle_;
  std::map<std::string, std::shared_ptr<UploadSession>> sessions_;
  std::thread reaper_;
};

struct FilesState {
  files::Resolver resolver;
  UploadStore uploads;
  FilesState(files::Resolver r, std::chrono::seconds idle) : resolver(r), uploads(idle) {}
};

PathPolicy MakePolicy(const RequestContext& ctx, const FilesState& state) {
  const auto& sec = ctx.config().security;
  return PathPolicy(sec.allowed_read_paths, sec.allowed_write_paths, state.resolver);
}

Encoding ParseEncoding(const Params& p) {
  auto enc = p.OptionalString("encoding");
  if (!enc || *enc == "base64") return Encoding::kBase64;
  if (*enc == "utf8") return Encoding::kUtf8;
  Params::Fail("encoding", "\"base64\" or \"utf8\"");
}

std::optional<mode_t> ParsePermissions(const json::object& params) {
  const json::value* v = params.if_contains("permissions");
  if (!v || v->is_null()) return std::nullopt;
  constexpr const char* kExpected = "file mode 0..0777 as an octal string (\"0644\") or integer";
  int64_t mode = -1;
  if (v->is_string()) {
    std::string_view s = v->get_string();
    if (s.empty() || s.size() > 4) Params::Fail("permissions", kExpected);
    mode = 0;
    for (char c : s) {
      if (c < '0' || c > '7') Params::Fail("permissions", kExpected);
      mode = mode * 8 + (c - '0');
    }
  } else if (v->is_int64()) {
    mode = v->get_int64();
  } else if (v->is_uint64()) {
    mode = v->get_uint64() > 0777 ? -1 : static_cast<int64_t>(v->get_uint64());
  }
  // No setuid/setgid/sticky bits: the agent runs as root.
  if (mode < 0 || mode > 0777) Params::Fail("permissions", kExpected);
  return static_cast<mode_t>(mode);
}

// The payload param as a view into the request (no copy).
std::string_view DataParam(const json::object& params, std::string_view name) {
  const json::value* v = params.if_contains(name);
  if (!v) Params::Fail(name, "a string");
  if (!v->is_string()) Params::Fail(name, "a string");
  return v->get_string();
}

// Decodes into `storage` for base64; utf8 text is used as is (JSON strings are valid UTF-8).
std::string_view DecodeData(std::string_view text, Encoding enc, std::string& storage,
                            std::string_view param) {
  if (enc == Encoding::kUtf8) return text;
  if (!Base64Decode(text, storage)) {
    throw RpcError(ErrorCode::kInvalidParams,
                   "Invalid params: '" + std::string(param) +
                       "' is not valid base64 (RFC 4648, standard alphabet, padded)",
                   {{"param", param}, {"expected", "base64"}});
  }
  return storage;
}

[[noreturn]] void ThrowTooLarge(std::string_view what, uint64_t limit) {
  throw RpcError(
      ErrorCode::kTooLarge,
      std::string(what) + " exceeds max_file_size_mb (" + std::to_string(limit) + " bytes)",
      {{"limit_bytes", limit}});
}

const char* TypeName(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISLNK(mode)) return "symlink";
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "char_device";
  if (S_ISBLK(mode)) return "block_device";
  return "unknown";
}

std::string OctalMode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

[[noreturn]] void ThrowNotRegular(std::string_view path, mode_t mode) {
  throw RpcError(ErrorCode::kPermissionDenied,
                 "Only regular files can be read or written; " + files::ShortForMessage(path) +
                     " is a " + TypeName(mode),
                 {{"policy", "regular_files_only"}, {"path", path}, {"type", TypeName(mode)}});
}

// Content of a file with several names could be reached through a name outside the allowed
// trees (a hard link planted by a local user), so it is never read or appended to.
[[noreturn]] void ThrowHardLinked(std::string_view path, nlink_t links) {
  throw RpcError(ErrorCode::kPermissionDenied,
                 "File " + files::ShortForMessage(path) + " has " + std::to_string(links) +
                     " hard links; its content is not read or appended to",
                 {{"policy", "no_hard_links"}, {"path", path}});
}

struct stat FstatRegular(int fd, std::string_view path, bool content) {
  struct stat st;
  if (::fstat(fd, &st) != 0) files::ThrowIo(errno, "fstat", path);
  if (!S_ISREG(st.st_mode)) ThrowNotRegular(path, st.st_mode);
  if (content && st.st_nlink > 1) ThrowHardLinked(path, st.st_nlink);
  return st;
}

// "x/" and "x/." name a directory, as in open(2): such a path never reaches a file (rm of
// "file/" must not delete the file).
bool NamesDirectory(std::string_view path) {
  return path.size() > 1 && (path.back() == '/' || path.ends_with("/."));
}

[[noreturn]] void ThrowNotDirectory(std::string_view path) {
  throw RpcError(ErrorCode::kNotFound,
                 "Not a directory: " + files::ShortForMessage(path) +
                     " (a path ending in / must name a directory)",
                 {{"path", path}});
}

// What is at parent/name now (lstat); refuses anything a write must not replace.
std::optional<struct stat> ExistingTarget(const PathPolicy::Parent& parent, std::string_view path,
                                          Access access) {
  struct stat st;
  if (::fstatat(parent.dir.get(), parent.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT && NamesDirectory(path)) ThrowNotDirectory(path);  // no file "x/"
    if (errno == ENOENT) return std::nullopt;
    files::ThrowIo(errno, "stat", path);
  }
  if (S_ISLNK(st.st_mode)) {
    files::ThrowRefused(path, access, "a symlink or magic link below the allowed entry");
  }
  if (!S_ISREG(st.st_mode)) ThrowNotRegular(path, st.st_mode);
  if (NamesDirectory(path)) ThrowNotDirectory(path);
  return st;
}

// Mode and owner for a file that replaces `existing` (or is new).
void PrepareReplacement(int fd, const std::optional<struct stat>& existing,
                        std::optional<mode_t> permissions, std::string_view path) {
  // Not S_ISUID/S_ISGID/S_ISVTX from the old file: new content must not inherit them unasked.
  mode_t mode = permissions ? *permissions : existing ? (existing->st_mode & 0777) : 0644;
  if (::fchmod(fd, mode) != 0) files::ThrowIo(errno, "chmod", path);
  if (existing && ::geteuid() == 0) {
    (void)::fchown(fd, existing->st_uid, existing->st_gid);  // best effort: keep the owner
  }
}

json::value FileRead(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path", "offset", "length", "encoding"});
  std::string path = p.RequiredString("path");
  uint64_t offset = p.OptionalUint("offset", INT64_MAX).value_or(0);
  std::optional<uint64_t> length = p.OptionalUint("length");
  Encoding enc = ParseEncoding(p);
  PathPolicy policy = MakePolicy(ctx, state);
  // O_NONBLOCK: a FIFO must not hang the open; it is refused right after by fstat.
  const int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | (NamesDirectory(path) ? O_DIRECTORY : 0);
  // Tried on the I/O thread first (kInlineFirst): a read the caches can serve is answered
  // there; one that needs the disk throws WouldBlock and runs again on a worker.
  const bool io_thread = ctx.on_io_thread();
  UniqueFd fd;
  try {
    fd = io_thread ? policy.OpenCached(path, Access::kRead, flags)
                   : policy.Open(path, Access::kRead, flags);
  } catch (const RpcError& e) {
    // A socket cannot be opened at all (ENXIO): refuse it as the non-regular file it is, as
    // file_stat and the writes do, not as an I/O error.
    const json::value* err = e.data().if_contains("errno");
    if (err && err->is_int64() && err->get_int64() == ENXIO) {
      UniqueFd pin = policy.Open(path, Access::kRead, O_PATH);
      struct stat st;
      if (::fstat(pin.get(), &st) == 0 && !S_ISREG(st.st_mode)) ThrowNotRegular(path, st.st_mode);
    }
    throw;
  }
  struct stat st = FstatRegular(fd.get(), path, true);
  if (io_thread && st.st_size == 0) throw WouldBlock();  // procfs and sysfs: read on a worker
  uint64_t limit = ctx.config().max_file_bytes();
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > limit) ThrowTooLarge("File size " + std::to_string(size), limit);

  size_t cap = enc == Encoding::kBase64 ? MaxBinaryChunk(ctx.config()) : MaxUtf8Chunk(ctx.config());
  uint64_t want = std::min<uint64_t>(length.value_or(cap), cap);
  // procfs and sysfs files report size 0 yet have content: those are read until a short read.
  bool size_known = size > 0;
  bool past_end = false;  // a size-0 file with nothing at `offset`
  if (size_known) {
    want = offset >= size ? 0 : std::min(want, size - offset);
  } else if (want > 0) {
    if (offset >= limit) {
      // Past the limit only content is too large: an empty file there is just at its end.
      char probe;
      if (files::ReadAt(fd.get(), &probe, 1, offset, path) > 0) {
        ThrowTooLarge("Content of a size-0 (procfs/sysfs) file", limit);
      }
      want = 0;
      past_end = true;
    } else {
      want = std::min(want, limit - offset);
    }
  }
  std::unique_ptr<char[]> buf(new char[want > 0 ? want : 1]);
  size_t got = io_thread ? files::ReadCachedAt(fd.get(), buf.get(), want, offset, path)
                         : files::ReadAt(fd.get(), buf.get(), want, offset, path);
  bool eof = size_known ? offset + got >= size : past_end || got < want;

  if (enc == Encoding::kBase64) {
    // Encoded straight into the reply line (base64 needs no JSON escaping): the payload is
    // written once, with room for the fields after it and the reply's tail.
    std::string& out = ctx.result_text();
    size_t encoded = Base64EncodedSize(got);
    out.reserve(out.size() + encoded + 160);
    out += R"({"data":")";
    size_t at = out.size();
    out.resize(at + encoded);
    Base64EncodeTo(out.data() + at, std::string_view(buf.get(), got));
    out += R"(","size":)" + std::to_string(size) + R"(,"eof":)" + (eof ? "true" : "false") +
           R"(,"offset":)" + std::to_string(offset) + R"(,"length":)" + std::to_string(got) + "}";
    return nullptr;
  }
  json::object result;
  json::string data;
  {
    bool truncated = false;
    size_t valid = ValidUtf8Prefix(std::string_view(buf.get(), got), &truncated);
    if (valid < got) {
      // A character cut by the chunk end is left for the next read; anything else is invalid.
      if (truncated && !eof && valid == 0) {
        // Nothing before the cut: an empty reply would have the client ask the same again.
        throw RpcError(ErrorCode::kInvalidParams,
                       "length " + std::to_string(got) + " ends inside the character at byte " +
                           std::to_string(offset) + "; read at least 4 bytes",
                       {{"param", "length"}, {"offset", offset}});
      }
      if (!(truncated && !eof && valid > 0)) {
        throw RpcError(ErrorCode::kInvalidParams,
                       "File content is not valid UTF-8 at byte " + std::to_string(offset + valid) +
                           "; read it with encoding \"base64\"",
                       {{"param", "encoding"}, {"expected", "base64"}, {"offset", offset + valid}});
      }
      got = valid;
      eof = false;
    }
    data.assign(buf.get(), got);
  }
  result["data"] = std::move(data);
  result["size"] = size;
  result["eof"] = eof;
  result["offset"] = offset;
  result["length"] = got;
  return result;
}

json::value FileWrite(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path", "data", "encoding", "mode", "permissions"});
  std::string path = p.RequiredString("path");
  Encoding enc = ParseEncoding(p);
  WriteMode mode = WriteMode::kOverwrite;
  if (auto m = p.OptionalString("mode")) {
    if (*m == "append") {
      mode = WriteMode::kAppend;
    } else if (*m == "create_new") {
      mode = WriteMode::kCreateNew;
    } else if (*m != "overwrite") {
      Params::Fail("mode", "\"overwrite\", \"append\" or \"create_new\"");
    }
  }
  std::optional<mode_t> permissions = ParsePermissions(params);
  std::string storage;
  std::string_view data = DecodeData(DataParam(params, "data"), enc, storage, "data");
  uint64_t limit = ctx.config().max_file_bytes();
  if (data.size() > limit)
    ThrowTooLarge("Data of " + std::to_string(data.size()) + " bytes", limit);

  PathPolicy policy = MakePolicy(ctx, state);
  PathPolicy::Parent parent = policy.OpenParent(path, Access::kWrite);
  std::optional<struct stat> existing = ExistingTarget(parent, path, Access::kWrite);
  json::object result;
  result["path"] = parent.normalized;
  result["bytes_written"] = data.size();

  if (mode == WriteMode::kAppend) {
    int fd =
        ::openat(parent.dir.get(), parent.name.c_str(),
                 O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW | O_CLOEXEC,
                 permissions.value_or(0644));
    if (fd < 0) {
      if (errno == ELOOP) {
        files::ThrowRefused(path, Access::kWrite,
                            "a symlink or magic link below the allowed entry");
      }
      if (errno == ENXIO) ThrowNotRegular(path, S_IFIFO);
      files::ThrowIo(errno, "open", path);
    }
    UniqueFd file(fd);
    struct stat st = FstatRegular(fd, path, true);
    if (static_cast<uint64_t>(st.st_size) + data.size() > limit) {
      ThrowTooLarge(
          "Appending " + std::to_string(data.size()) + " bytes to " + std::to_string(st.st_size),
          limit);
    }
    if (permissions && ::fchmod(fd, *permissions) != 0) files::ThrowIo(errno, "chmod", path);
    const char* ptr = data.data();
    size_t left = data.size();
    while (left > 0) {
      ssize_t n = ::write(fd, ptr, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        files::ThrowIo(errno, "write", path);
      }
      ptr += n;
      left -= static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) files::ThrowIo(errno, "fsync", path);
    if (::fstat(fd, &st) == 0) result["size"] = static_cast<uint64_t>(st.st_size);
    return result;
  }

  if (mode == WriteMode::kCreateNew && existing) {
    throw RpcError(ErrorCode::kAlreadyExists, "File already exists: " + parent.normalized,
                   {{"path", parent.normalized}});
  }
  files::PendingFile pending(parent.dir.get(), permissions.value_or(0600), path);
  PrepareReplacement(pending.fd(), existing, permissions, path);
  files::WriteAll(pending.fd(), data.data(), data.size(), 0, path);
  pending.Commit(parent.name, mode == WriteMode::kOverwrite);
  result["size"] = data.size();
  return result;
}

json::object StatObject(const struct stat& st) {
  json::object o;
  o["type"] = TypeName(st.st_mode);
  o["size"] = static_cast<uint64_t>(st.st_size);
  o["mode"] = OctalMode(st.st_mode);
  o["uid"] = st.st_uid;
  o["gid"] = st.st_gid;
  o["nlink"] = static_cast<uint64_t>(st.st_nlink);
  o["mtime"] = static_cast<int64_t>(st.st_mtim.tv_sec);
  o["mtime_ns"] = static_cast<int64_t>(st.st_mtim.tv_nsec);
  o["atime"] = static_cast<int64_t>(st.st_atim.tv_sec);
  o["ctime"] = static_cast<int64_t>(st.st_ctim.tv_sec);
  return o;
}

// Hashes `size` bytes, or, for size 0 (a procfs/sysfs file), what one pass reads up to `limit`.
std::string HashFile(int fd, uint64_t size, uint64_t limit, RequestContext& ctx,
                     std::string_view path) {
  Sha256 hash;
  // Small enough to stay in the L2 cache: the hash then reads what pread just wrote from there
  // rather than from memory (200 MB: 136 ms of CPU against 142-144 with 1 MiB pieces).
  constexpr size_t kPiece = 128 << 10;
  std::unique_ptr<char[]> buf(new char[kPiece]);
  uint64_t offset = 0;
  bool size_known = size > 0;
  if (!size_known) size = limit + 1;
  while (offset < size) {
    if (ctx.abandoned()) {
      throw RpcError(ErrorCode::kTimeout, "Hashing " + std::string(path) + " was abandoned");
    }
    size_t got =
        files::ReadAt(fd, buf.get(), std::min<uint64_t>(size - offset, kPiece), offset, path);
    if (got == 0) break;
    hash.Update(buf.get(), got);
    offset += got;
  }
  if (!size_known && offset > limit)
    ThrowTooLarge("Content of a size-0 (procfs/sysfs) file", limit);
  return hash.FinishHex();
}

json::value FileStat(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path", "sha256"});
  std::string path = p.RequiredString("path");
  bool want_hash = p.OptionalBool("sha256").value_or(false);
  PathPolicy policy = MakePolicy(ctx, state);
  // O_PATH with O_NOFOLLOW: a symlink below the entry is described, never followed.
  UniqueFd fd = policy.Open(path, Access::kRead, O_PATH | (NamesDirectory(path) ? O_DIRECTORY : 0));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) files::ThrowIo(errno, "fstat", path);
  json::object result = StatObject(st);
  result["path"] = policy.Check(path, Access::kRead).normalized;
  if (want_hash) {
    if (!S_ISREG(st.st_mode)) ThrowNotRegular(path, st.st_mode);
    UniqueFd rfd = policy.Open(path, Access::kRead, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    struct stat rst = FstatRegular(rfd.get(), path, true);
    // Like file_read: the size cap applies to every read of a file's content.
    uint64_t limit = ctx.config().max_file_bytes();
    if (static_cast<uint64_t>(rst.st_size) > limit) {
      ThrowTooLarge("File size " + std::to_string(rst.st_size), limit);
    }
    if (rst.st_dev != st.st_dev || rst.st_ino != st.st_ino) {
      throw RpcError(ErrorCode::kConflict, "File was replaced while being hashed; retry",
                     {{"path", path}});
    }
    result["sha256"] = HashFile(rfd.get(), static_cast<uint64_t>(rst.st_size),
                                ctx.config().max_file_bytes(), ctx, path);
  }
  return result;
}

json::value FileList(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path", "offset", "limit"});
  std::string path = p.RequiredString("path");
  uint64_t offset = p.OptionalUint("offset").value_or(0);
  uint64_t limit = p.OptionalUint("limit").value_or(UINT64_MAX);
  // A page of 0 entries would never advance next_offset: a client paging on it loops forever.
  if (limit == 0) Params::Fail("limit", "an integer >= 1");
  PathPolicy policy = MakePolicy(ctx, state);
  UniqueFd fd = policy.Open(path, Access::kRead, O_RDONLY | O_DIRECTORY);
  int dup = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
  if (dup < 0) files::ThrowIo(errno, "dup", path);
  DIR* dir = ::fdopendir(dup);
  if (!dir) {
    ::close(dup);
    files::ThrowIo(errno, "opendir", path);
  }
  std::vector<std::string> names;
  bool truncated = false;
  while (dirent* ent = ::readdir(dir)) {
    std::string_view name = ent->d_name;
    if (name == "." || name == "..") continue;
    if (names.size() >= kMaxListEntries) {
      truncated = true;
      break;
    }
    names.emplace_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());

  // Entries are added while the reply still fits in max_message_size_kb; the rest is paged.
  // The path is in the reply as JSON text: escaped, a control character takes 6 bytes.
  std::string path_text;
  AppendJson(path_text, json::value(policy.Check(path, Access::kRead).normalized));
  size_t overhead = 256 + path_text.size();
  size_t reply_budget = ReplyBudget(ctx.config());
  size_t budget = reply_budget > overhead ? reply_budget - overhead : 0;
  json::array entries;
  size_t used = 0;
  std::string cost_text;
  uint64_t i = offset;
  for (; i < names.size() && entries.size() < limit; ++i) {
    json::object entry;
    entry["name"] = names[i];
    // The reply carries such a name with U+FFFD, so it may read like another entry's name
    // and no request can name it: say so, for clients that would ask for it by that name.
    if (!IsValidUtf8(names[i])) entry["name_lossy"] = true;
    struct stat st;
    if (::fstatat(fd.get(), names[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      entry["type"] = TypeName(st.st_mode);
      entry["size"] = static_cast<uint64_t>(st.st_size);
      entry["mode"] = OctalMode(st.st_mode);
      entry["mtime"] = static_cast<int64_t>(st.st_mtim.tv_sec);
    } else {
      entry["type"] = "unknown";  // vanished meanwhile
    }
    // Measured as the reply will be written (a name that is not UTF-8 grows: U+FFFD per byte).
    cost_text.clear();
    AppendJson(cost_text, entry);
    size_t cost = cost_text.size() + 1;
    if (used + cost > budget && !entries.empty()) break;
    used += cost;
    entries.push_back(std::move(entry));
  }
  json::object result;
  result["path"] = policy.Check(path, Access::kRead).normalized;
  result["total"] = names.size();
  result["entries"] = std::move(entries);
  if (i < names.size()) {
    result["next_offset"] = i;
  } else {
    result["next_offset"] = nullptr;
  }
  result["truncated"] = truncated;
  return result;
}

json::value FileDelete(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path"});
  std::string path = p.RequiredString("path");
  PathPolicy policy = MakePolicy(ctx, state);
  PathPolicy::Parent parent = policy.OpenParent(path, Access::kWrite);
  struct stat st;
  if (::fstatat(parent.dir.get(), parent.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) {
      throw RpcError(ErrorCode::kNotFound, "No such file or directory: " + parent.normalized,
                     {{"path", parent.normalized}});
    }
    files::ThrowIo(errno, "stat", path);
  }
  if (NamesDirectory(path) && !S_ISDIR(st.st_mode)) ThrowNotDirectory(path);
  // unlinkat never follows a symlink: removing one removes the link itself.
  int flags = S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0;
  if (::unlinkat(parent.dir.get(), parent.name.c_str(), flags) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) {
      throw RpcError(ErrorCode::kConflict, "Directory is not empty: " + parent.normalized,
                     {{"path", parent.normalized}});
    }
    if (errno == ENOENT) {
      throw RpcError(ErrorCode::kNotFound, "No such file or directory: " + parent.normalized,
                     {{"path", parent.normalized}});
    }
    files::ThrowIo(errno, "unlink", path);
  }
  ::fsync(parent.dir.get());
  return json::object{
      {"path", parent.normalized}, {"deleted", true}, {"type", TypeName(st.st_mode)}};
}

// Creates one directory; returns false if a directory was already there.
// `must_be_dir`: a level below which more follow, or one written with a trailing '/'.
bool MakeOneDir(const PathPolicy& policy, const std::string& path, mode_t mode, bool exist_ok,
                bool must_be_dir) {
  PathPolicy::Parent parent = policy.OpenParent(path, Access::kWrite);
  if (::mkdirat(parent.dir.get(), parent.name.c_str(), mode) != 0) {
    int err = errno;
    struct stat st;
    if (err == EEXIST &&
        ::fstatat(parent.dir.get(), parent.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (S_ISDIR(st.st_mode) && exist_ok) return false;
      // What a path through it would meet, rather than "already exists".
      if (S_ISLNK(st.st_mode) && (exist_ok || must_be_dir)) {
        files::ThrowRefused(parent.normalized, Access::kWrite,
                            "a symlink or magic link below the allowed entry");
      }
      if (!S_ISDIR(st.st_mode) && must_be_dir) {
        throw RpcError(ErrorCode::kNotFound,
                       "Not a directory: " + files::ShortForMessage(parent.normalized),
                       {{"path", parent.normalized}});
      }
    }
    if (err == EEXIST) {
      throw RpcError(ErrorCode::kAlreadyExists, "Already exists: " + parent.normalized,
                     {{"path", parent.normalized}});
    }
    files::ThrowIo(err, "mkdir", path);
  }
  // chmod through a descriptor of the new directory itself, never through a name that a
  // local user could have swapped for a symlink meanwhile; umask does not apply.
  UniqueFd fd(::openat(parent.dir.get(), parent.name.c_str(),
                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (fd) (void)::fchmod(fd.get(), mode);
  ::fsync(parent.dir.get());
  return true;
}

json::value FileMkdir(const json::object& params, RequestContext& ctx, const FilesState& state) {
  Params p(params, {"path", "parents", "permissions"});
  std::string path = p.RequiredString("path");
  bool parents = p.OptionalBool("parents").value_or(false);
  mode_t mode = ParsePermissions(params).value_or(0755);
  PathPolicy policy = MakePolicy(ctx, state);
  files::LexicalResult lex = policy.Check(path, Access::kWrite);
  bool created = false;
  if (lex.remainder.empty()) {
    // The allowed entry itself: never created or replaced here (it has no parent we may
    // touch), but with `parents` an existing directory is fine, as anywhere else.
    UniqueFd entry = policy.Open(path, Access::kWrite, O_PATH);
    struct stat st;
    if (::fstat(entry.get(), &st) != 0) files::ThrowIo(errno, "fstat", path);
    if (!parents || !S_ISDIR(st.st_mode)) {
      throw RpcError(ErrorCode::kAlreadyExists, "Already exists: " + lex.normalized,
                     {{"path", lex.normalized}});
    }
  } else if (parents) {
    // Each level goes through the policy again, so no level can be a symlink.
    std::string base = lex.normalized.substr(0, lex.normalized.size() - lex.remainder.size());
    size_t pos = 0;
    for (;;) {
      size_t slash = lex.remainder.find('/', pos);
      std::string prefix = base + lex.remainder.substr(0, slash);
      // `permissions` is for the directory asked for; levels made on the way get 0755, as
      // with mkdir -p -m (a 0500 parent would stop the next level for a non-root agent).
      bool last = slash == std::string::npos;
      created = MakeOneDir(policy, prefix, last ? mode : 0755, true, !last || NamesDirectory(path));
      if (slash == std::string::npos) break;
      pos = slash + 1;
    }
  } else {
    created = MakeOneDir(policy, lex.normalized, mode, parents, NamesDirectory(path));
  }
  return json::object{{"path", lex.normalized}, {"created", created}};
}

json::value UploadBegin(const json::object& params, RequestContext& ctx, FilesState& state) {
  Params p(params, {"path", "size", "mode", "permissions"});
  std::string path = p.RequiredString("path");
  std::optional<uint64_t> size = p.OptionalUint("size");
  bool replace = true;
  if (auto m = p.OptionalString("mode")) {
    if (*m == "create_new") {
      replace = false;
    } else if (*m != "overwrite") {
      Params::Fail("mode", "\"overwrite\" or \"create_new\"");
    }
  }
  auto session = std::make_shared<UploadSession>();
  session->permissions = ParsePermissions(params);
  uint64_t limit = ctx.config().max_file_bytes();
  if (size && *size > limit) ThrowTooLarge("Upload size " + std::to_string(*size), limit);
  PathPolicy policy = MakePolicy(ctx, state);
  PathPolicy::Parent parent = policy.OpenParent(path, Access::kWrite);
  std::optional<struct stat> existing = ExistingTarget(parent, path, Access::kWrite);
  if (!replace && existing) {
    throw RpcError(ErrorCode::kAlreadyExists, "File already exists: " + parent.normalized,
                   {{"path", parent.normalized}});
  }
  session->file = std::make_unique<files::PendingFile>(parent.dir.get(), 0600, path);
  if (size) {
    try {
      files::ReserveSpace(session->file->fd(), *size, parent.normalized);
    } catch (const RpcError&) {
      // The disk is full: a retried copy must not fail on the reservation of its own
      // predecessor, killed mid-way and not yet expired.
      if (state.uploads.ReleaseIdleReservations() == 0) throw;
      files::ReserveSpace(session->file->fd(), *size, parent.normalized);
    }
  }
  session->path = parent.normalized;
  session->name = parent.name;
  session->dir = std::move(parent.dir);
  session->replace = replace;
  session->expected_size = size;
  std::string handle = state.uploads.Add(session);
  return json::object{{"handle", handle},
                      {"path", session->path},
                      {"chunk_size", MaxBinaryChunk(ctx.config())},
                      {"expires_after_idle_seconds", state.uploads.idle().count()}};
}

json::value UploadChunk(const json::object& params, RequestContext& ctx, FilesState& state) {
  Params p(params, {"handle", "offset", "data"});
  std::string handle = p.RequiredString("handle");
  uint64_t offset = p.OptionalUint("offset", INT64_MAX).value_or(0);
  std::string storage;
  std::string_view data = DecodeData(DataParam(params, "data"), Encoding::kBase64, storage, "data");
  auto session = state.uploads.Get(handle, false);
  std::lock_guard lock(session->mu);
  if (!session->file) {
    throw RpcError(ErrorCode::kNotFound, "Upload session " + handle + " is being committed",
                   {{"handle", handle}});
  }
  if (size_t chunk = MaxBinaryChunk(ctx.config()); data.size() > chunk) {
    throw RpcError(ErrorCode::kTooLarge,
                   "Chunk of " + std::to_string(data.size()) + " bytes; at most chunk_size (" +
                       std::to_string(chunk) + ")",
                   {{"limit_bytes", chunk}});
  }
  uint64_t limit = ctx.config().max_file_bytes();
  uint64_t end = offset + data.size();
  if (end > limit) ThrowTooLarge("Upload reaching byte " + std::to_string(end), limit);
  if (session->expected_size && end > *session->expected_size) {
    throw RpcError(ErrorCode::kInvalidParams,
                   "Chunk ends at byte " + std::to_string(end) + ", beyond the upload's size " +
                       std::to_string(*session->expected_size),
                   {{"param", "offset"}, {"expected", "offset + length <= size"}});
  }
  files::WriteAll(session->file->fd(), data.data(), data.size(), offset, session->path);
  // Start writing back what has piled up, without waiting for it: the fsync at commit then finds
  // most pages on disk already (measured here: the commit fsync of 10 MB fell from ~15 ms to ~7).
  session->unsynced += data.size();
  if (session->unsynced >= kWritebackBytes) {
    ::sync_file_range(session->file->fd(), 0, 0, SYNC_FILE_RANGE_WRITE);
    session->unsynced = 0;
  }
  // Hashed on the fly in file order. A chunk that arrives early waits (as a range in the temp
  // file) until the gap before it is filled, so the data is hashed once whatever the order.
  if (data.empty()) {
  } else if (offset == session->hashed && session->in_order) {
    session->hash.Update(data);
    session->hashed = end;
    std::string pending;
    while (!session->waiting.empty() && session->waiting.begin()->first <= session->hashed) {
      auto [w_off, w_len] = *session->waiting.begin();
      session->waiting.erase(session->waiting.begin());
      if (w_off < session->hashed) {
        session->in_order = false;  // overlapping chunks: commit re-reads the file
        break;
      }
      pending.resize(w_len);
      size_t got = files::ReadAt(session->file->fd(), pending.data(), w_len, w_off, session->path);
      session->hash.Update(pending.data(), got);
      session->hashed += got;
    }
  } else if (offset > session->hashed) {
    auto [it, fresh] = session->waiting.emplace(offset, data.size());
    if (!fresh) session->in_order = false;  // the same offset sent twice
  } else {
    session->in_order = false;  // rewrites bytes already hashed: commit re-reads the file
  }
  session->end = std::max(session->end, end);
  return json::object{{"bytes_written", data.size()}, {"end", session->end}};
}

json::value UploadCommit(const json::object& params, RequestContext& ctx, FilesState& state) {
  Params p(params, {"handle", "sha256", "size"});
  std::string handle = p.RequiredString("handle");
  std::string expected = p.RequiredString("sha256");
  std::optional<uint64_t> size_param = p.OptionalUint("size");
  if (expected.size() != 64) Params::Fail("sha256", "64 hex digits");
  for (char& c : expected) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      Params::Fail("sha256", "64 hex digits");
  }
  // Taken out of the store first: whatever happens next, the session is over.
  auto session = state.uploads.Get(handle, true);
  std::lock_guard lock(session->mu);
  std::unique_ptr<files::PendingFile> file = std::move(session->file);
  if (!file) throw RpcError(ErrorCode::kNotFound, "Upload session " + handle + " is gone");
  struct stat st;
  if (::fstat(file->fd(), &st) != 0) files::ThrowIo(errno, "fstat", session->path);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  std::optional<uint64_t> want_size = size_param ? size_param : session->expected_size;
  if (want_size && *want_size != size) {
    throw RpcError(ErrorCode::kConflict,
                   "Upload has " + std::to_string(size) + " bytes, expected " +
                       std::to_string(*want_size) + "; nothing was written",
                   {{"expected_size", *want_size}, {"actual_size", size}});
  }
  // Blocks reserved at begin past the final size (a commit may name a smaller `size` than the
  // begin did) would stay allocated beyond the end of the installed file: released here.
  if (session->expected_size && *session->expected_size > size) {
    if (::ftruncate(file->fd(), static_cast<off_t>(size)) != 0) {
      files::ThrowIo(errno, "ftruncate", session->path);
    }
  }
  std::string actual =
      session->in_order && session->hashed == size
          ? session->hash.FinishHex()
          : HashFile(file->fd(), size, ctx.config().max_file_bytes(), ctx, session->path);
  if (actual != expected) {
    throw RpcError(
        ErrorCode::kConflict,
        "sha256 mismatch for " + session->path + ": got " + actual + "; nothing was written",
        {{"expected", expected}, {"actual", actual}, {"path", session->path}});
  }
  // The directory was checked at begin; make sure it is still the one the policy resolves to.
  PathPolicy policy = MakePolicy(ctx, state);
  PathPolicy::Parent parent = policy.OpenParent(session->path, Access::kWrite);
  struct stat a, b;
  if (::fstat(parent.dir.get(), &a) != 0 || ::fstat(session->dir.get(), &b) != 0 ||
      a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    throw RpcError(ErrorCode::kConflict,
                   "The target directory changed during the upload; nothing was written",
                   {{"path", session->path}});
  }
  std::optional<struct stat> existing = ExistingTarget(parent, session->path, Access::kWrite);
  if (!session->replace && existing) {
    throw RpcError(ErrorCode::kAlreadyExists, "File already exists: " + session->path,
                   {{"path", session->path}});
  }
  PrepareReplacement(file->fd(), existing, session->permissions, session->path);
  file->Commit(parent.name, session->replace);
  return json::object{{"path", session->path}, {"size", size}, {"sha256", actual}};
}

json::value UploadAbort(const json::object& params, RequestContext&, FilesState& state) {
  Params p(params, {"handle"});
  auto session = state.uploads.Get(p.RequiredString("handle"), true);
  std::lock_guard lock(session->mu);
  session->file.reset();
  return json::object{{"aborted", true}};
}

files::Resolver ChooseResolver() {
  // Test hook: KVMMANAGER_PATH_RESOLVER=walk forces the fallback used on pre-5.6 kernels.
  const char* forced = std::getenv("KVMMANAGER_PATH_RESOLVER");
  if (forced && std::string_view(forced) == "walk") return files::Resolver::kWalk;
  return PathPolicy::KernelHasOpenat2() ? files::Resolver::kOpenat2 : files::Resolver::kWalk;
}

std::chrono::seconds UploadIdle() {
  // Test hook: KVMMANAGER_UPLOAD_IDLE_SECONDS shortens the idle expiry of upload sessions.
  const char* v = std::getenv("KVMMANAGER_UPLOAD_IDLE_SECONDS");
  if (v) {
    long n = std::strtol(v, nullptr, 10);
    if (n > 0) return std::chrono::seconds(n);
  }
  return std::chrono::seconds(300);
}

}  // namespace

void RegisterFileMethods(MethodTable& table) {
  auto& state = table.Own(std::make_shared<FilesState>(ChooseResolver(), UploadIdle()));
  table.AddStartHook([&state](const Config& config, Logger& log) {
    LOG_INFO(log, "file paths resolved with %s",
             state.resolver == files::Resolver::kOpenat2 ? "openat2" : "an O_NOFOLLOW walk");
    // Named temps of a killed agent: in each writable directory entry, and next to each
    // writable single-file entry.
    // Opened as requests open entries: through trusted links only (a user's link in /tmp
    // would have the root agent delete and walk elsewhere).
    PathPolicy policy(config.security.allowed_read_paths, config.security.allowed_write_paths,
                      state.resolver);
    bool refused = false;
    auto open_dir = [&](const std::string& dir) -> UniqueFd {
      try {
        return policy.OpenEntryPath(dir, O_RDONLY | O_DIRECTORY, 0, Access::kWrite, dir, false);
      } catch (const RpcError& e) {
        refused = e.code() == ErrorCode::kPermissionDenied;
        LOG_DEBUG(log, "temp-file sweep skips %s: %s", dir.c_str(), e.what());
        return UniqueFd();
      }
    };
    std::vector<files::SweepRoot> roots;
    for (const auto& entry : files::NormalizeEntries(config.security.allowed_write_paths)) {
      refused = false;
      if (UniqueFd fd = open_dir(entry)) {
        roots.push_back({std::move(fd), entry, true});
      } else if (entry != "/" && !refused) {  // a single-file entry: its directory
        std::string parent = entry.substr(0, std::max<size_t>(1, entry.rfind('/')));
        if (UniqueFd pfd = open_dir(parent)) roots.push_back({std::move(pfd), parent, false});
      }
    }
    size_t removed = files::SweepStrayTemps(roots, kSweepMaxEntries, log);
    if (removed > 0) LOG_INFO(log, "removed %zu stray temp file(s)", removed);
  });
  table.Add("file_read", RunMode::kInlineFirst,
            [&state](const json::object& p, RequestContext& c) { return FileRead(p, c, state); });
  table.Add("file_write", RunMode::kWorker,
            [&state](const json::object& p, RequestContext& c) { return FileWrite(p, c, state); });
  table.Add("file_stat", RunMode::kWorker,
            [&state](const json::object& p, RequestContext& c) { return FileStat(p, c, state); });
  table.Add("file_list", RunMode::kWorker,
            [&state](const json::object& p, RequestContext& c) { return FileList(p, c, state); });
  table.Add("file_delete", RunMode::kWorker,
            [&state](const json::object& p, RequestContext& c) { return FileDelete(p, c, state); });
  table.Add("file_mkdir", RunMode::kWorker,
            [&state](const json::object& p, RequestContext& c) { return FileMkdir(p, c, state); });
  table.Add(
      "file_upload_begin", RunMode::kWorker,
      [&state](const json::object& p, RequestContext& c) { return UploadBegin(p, c, state); });
  table.Add(
      "file_upload_chunk", RunMode::kWorker,
      [&state](const json::object& p, RequestContext& c) { return UploadChunk(p, c, state); },
      "handle");
  table.Add(
      "file_upload_commit", RunMode::kWorker,
      [&state](const json::object& p, RequestContext& c) { return UploadCommit(p, c, state); },
      "handle");
  table.Add(
      "file_upload_abort", RunMode::kWorker,
      [&state](const json::object& p, RequestContext& c) { return UploadAbort(p, c, state); },
      "handle");
}

}  // namespace kvm
