#include "agent/handlers/files/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/core/method_table.h"  // WouldBlock
#include "protocol/errors.h"

namespace kvm::files {

std::string ShortForMessage(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "...";
}

void ThrowIo(int err, std::string_view what, std::string_view path) {
  throw RpcError(
      ErrorCode::kIoError,
      std::string(what) + " failed for " + ShortForMessage(path) + ": " + std::strerror(err),
      {{"errno", err}, {"detail", std::strerror(err)}, {"path", path}});
}

void ReserveSpace(int fd, uint64_t size, std::string_view path) {
  if (size == 0) return;
  if (::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(size)) == 0) return;
  if (errno == ENOSPC || errno == EDQUOT) ThrowIo(errno, "reserving space", path);
}

std::string RandomHex() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw RpcError(ErrorCode::kInternalError, "getrandom failed");
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

PendingFile::PendingFile(int dirfd, mode_t mode, std::string_view path_for_errors)
    : path_(path_for_errors) {
  dir_.reset(::fcntl(dirfd, F_DUPFD_CLOEXEC, 0));
  if (!dir_) ThrowIo(errno, "dup", path_);
  fd_.reset(::openat(dir_.get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, mode));
  if (fd_) return;
  // No O_TMPFILE on this filesystem: a named temp, swept at the next start if we die.
  for (int attempt = 0; attempt < 8 && !fd_; ++attempt) {
    temp_name_ = std::string(kTempPrefix) + RandomHex();
    fd_.reset(::openat(dir_.get(), temp_name_.c_str(),
                       O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, mode));
    if (!fd_ && errno != EEXIST) ThrowIo(errno, "create temp file", path_);
  }
  if (!fd_) ThrowIo(EEXIST, "create temp file", path_);
}

PendingFile::~PendingFile() {
  if (!committed_ && !temp_name_.empty()) ::unlinkat(dir_.get(), temp_name_.c_str(), 0);
}

void PendingFile::LinkAs(const std::string& target) {
  if (::linkat(fd_.get(), "", dir_.get(), target.c_str(), AT_EMPTY_PATH) == 0) return;
  int err = errno;
  if (err == ENOENT || err == EPERM) {
    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc route does not.
    char proc[64];
    std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd_.get());
    if (::linkat(AT_FDCWD, proc, dir_.get(), target.c_str(), AT_SYMLINK_FOLLOW) == 0) return;
    err = errno;
  }
  if (err == EEXIST) {
    throw RpcError(ErrorCode::kAlreadyExists, "File already exists: " + path_, {{"path", path_}});
  }
  ThrowIo(err, "link", path_);
}

void PendingFile::Commit(const std::string& name, bool replace) {
  if (::fsync(fd_.get()) != 0) ThrowIo(errno, "fsync", path_);
  if (anonymous()) {
    if (!replace) {
      LinkAs(name);
    } else {
      // Give it a name in the same directory, then rename over the target atomically.
      temp_name_ = std::string(kTempPrefix) + RandomHex();
      LinkAs(temp_name_);
      if (::renameat(dir_.get(), temp_name_.c_str(), dir_.get(), name.c_str()) != 0) {
        ThrowIo(errno, "rename", path_);  // the destructor unlinks the named temp
      }
      temp_name_.clear();
    }
  } else if (replace) {
    if (::renameat(dir_.get(), temp_name_.c_str(), dir_.get(), name.c_str()) != 0) {
      ThrowIo(errno, "rename", path_);
    }
    temp_name_.clear();
  } else {
    if (::linkat(dir_.get(), temp_name_.c_str(), dir_.get(), name.c_str(), 0) != 0) {
      if (errno == EEXIST) {
        throw RpcError(ErrorCode::kAlreadyExists, "File already exists: " + path_,
                       {{"path", path_}});
      }
      ThrowIo(errno, "link", path_);
    }
    ::unlinkat(dir_.get(), temp_name_.c_str(), 0);
    temp_name_.clear();
  }
  committed_ = true;
  if (::fsync(dir_.get()) != 0) ThrowIo(errno, "fsync of the directory", path_);
}

void WriteAll(int fd, const char* data, size_t size, uint64_t offset, std::string_view path) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowIo(errno, "write", path);
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

size_t ReadAt(int fd, char* data, size_t size, uint64_t offset, std::string_view path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, data + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowIo(errno, "read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

namespace {

// cachestat(2) (Linux 6.5): page-cache state of a file range. Declared here because the build
// machine's kernel headers predate it; the syscall number is the same on every architecture.
struct CachestatRange {
  uint64_t off, len;
};
struct Cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
constexpr long kSysCachestat = 451;

}  // namespace

bool ReadCannotWaitForDisk(int fd, uint64_t offset, size_t size) {
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0) return false;
  if (fs.f_type == RAMFS_MAGIC) return true;  // never swapped out
  if (fs.f_type != TMPFS_MAGIC) return false;
  // tmpfs: only a page that went to swap would wait.
  struct sysinfo si;
  if (::sysinfo(&si) == 0 && si.totalswap == 0) return true;
  return NoPageOfRangeInSwap(fd, offset, size);
}

bool NoPageOfRangeInSwap(int fd, uint64_t offset, size_t size) {
  CachestatRange range{offset, size};
  Cachestat cs{};
  if (::syscall(kSysCachestat, fd, &range, &cs, 0) != 0) return false;  // ENOSYS before 6.5
  return cs.nr_evicted == 0;  // a swapped-out tmpfs page counts as evicted; holes as nothing
}

size_t ReadCachedAt(int fd, char* data, size_t size, uint64_t offset, std::string_view path) {
  size_t done = 0;
  while (done < size) {
    iovec iov{data + done, size - done};
    ssize_t n = ::preadv2(fd, &iov, 1, static_cast<off_t>(offset + done), RWF_NOWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      // tmpfs and ramfs do not take RWF_NOWAIT (EOPNOTSUPP) yet read from memory: served
      // here all the same unless a page is in swap (/tmp is tmpfs on many systems).
      if (errno == EOPNOTSUPP && ReadCannotWaitForDisk(fd, offset + done, size - done)) {
        return done + ReadAt(fd, data + done, size - done, offset + done, path);
      }
      if (errno == EAGAIN || errno == EOPNOTSUPP) throw WouldBlock();
      ThrowIo(errno, "read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

namespace {

void SweepDir(int dirfd, int depth, int max_depth, size_t& budget, size_t& removed, Logger& log,
              const std::string& where) {
  int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DIR* dir = ::fdopendir(fd);
  if (!dir) {
    ::close(fd);
    return;
  }
  std::vector<std::string> subdirs;
  while (budget > 0) {
    errno = 0;
    dirent* ent = ::readdir(dir);
    if (!ent) break;
    --budget;
    std::string_view name = ent->d_name;
    if (name == "." || name == "..") continue;
    if (name.substr(0, kTempPrefix.size()) == kTempPrefix) {
      struct stat st;
      if (::fstatat(fd, ent->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
          ::unlinkat(fd, ent->d_name, 0) == 0) {
        ++removed;
        LOG_INFO(log, "removed stray temp file %s/%s", where.c_str(), ent->d_name);
      }
      continue;
    }
    if (ent->d_type == DT_DIR && depth < max_depth) subdirs.emplace_back(name);
  }
  for (const auto& sub : subdirs) {
    if (budget == 0) break;
    int subfd = ::openat(fd, sub.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (subfd < 0) continue;
    SweepDir(subfd, depth + 1, max_depth, budget, removed, log, where + "/" + sub);
    ::close(subfd);
  }
  ::closedir(dir);
}

}  // namespace

size_t SweepStrayTemps(const std::vector<SweepRoot>& roots, size_t max_entries, Logger& log) {
  size_t removed = 0;
  size_t budget = max_entries;
  for (const auto& root : roots) {
    if (root.fd)
      SweepDir(root.fd.get(), 0, root.recursive ? 16 : 0, budget, removed, log, root.dir);
  }
  if (budget == 0) LOG_WARN(log, "temp-file sweep stopped after %zu entries", max_entries);
  return removed;
}

}  // namespace kvm::files
