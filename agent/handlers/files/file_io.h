// Building blocks of the file methods: atomic replacement, temp-file sweep, UTF-8 checks.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/core/logger.h"
#include "agent/core/unique_fd.h"

namespace kvm::files {

// Named temp files start with this; the startup sweep removes leftovers with this prefix.
inline constexpr std::string_view kTempPrefix = ".kvmmanager-tmp.";

// A file being written in a directory that takes its final name only when complete, so a
// crash at any moment leaves the old content (or nothing) at the final name. Uses an
// anonymous O_TMPFILE where the filesystem supports it (nothing to clean up after a crash),
// else a named temp with kTempPrefix.
class PendingFile {
 public:
  PendingFile(int dirfd, mode_t mode, std::string_view path_for_errors);
  ~PendingFile();
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;

  int fd() const { return fd_.get(); }
  bool anonymous() const { return temp_name_.empty(); }

  // fsync, then rename over `name` (replace) or link as `name` only if it does not exist
  // (create_new: -32007 otherwise), then fsync the directory.
  void Commit(const std::string& name, bool replace);

 private:
  void LinkAs(const std::string& target);  // anonymous only

  UniqueFd dir_;
  UniqueFd fd_;
  std::string temp_name_;
  std::string path_;
  bool committed_ = false;
};

// Writes all of `data` at `offset` (pwrite loop); throws io_error.
void WriteAll(int fd, const char* data, size_t size, uint64_t offset, std::string_view path);
// Reads up to `size` bytes at `offset`; returns how many were read (short only at EOF).
size_t ReadAt(int fd, char* data, size_t size, uint64_t offset, std::string_view path);
// ReadAt for the I/O thread: only what the page cache holds (preadv2 RWF_NOWAIT); throws
// WouldBlock where the disk would be needed or the file system cannot say. tmpfs and ramfs,
// which refuse RWF_NOWAIT, are read all the same when ReadCannotWaitForDisk says so.
size_t ReadCachedAt(int fd, char* data, size_t size, uint64_t offset, std::string_view path);
// True when reading the range cannot wait for a disk: ramfs; tmpfs with no swap configured, or
// (cachestat(2), Linux 6.5+) with no page of the range in swap. False for other file systems.
bool ReadCannotWaitForDisk(int fd, uint64_t offset, size_t size);
// Its tmpfs-with-swap case: true when cachestat(2) says no page of the range was evicted (a
// tmpfs page in swap counts as evicted); false when it cannot say (before Linux 6.5).
bool NoPageOfRangeInSwap(int fd, uint64_t offset, size_t size);

// Reserves `size` bytes of blocks for `fd` without changing its size (fallocate KEEP_SIZE): an
// upload that the disk cannot hold is refused before any data moves, and ext4 then writes the
// file in less time. Throws io_error on ENOSPC or EDQUOT; does nothing where the file system
// has no fallocate.
void ReserveSpace(int fd, uint64_t size, std::string_view path);

[[noreturn]] void ThrowIo(int err, std::string_view what, std::string_view path);

// Removes stray kTempPrefix files in the given directories (recursively where asked, no
// symlinks followed, at most `max_entries` directory entries looked at). Returns the count.
struct SweepRoot {
  UniqueFd fd;      // the directory, opened as the path policy opens entries (trusted links)
  std::string dir;  // its path, for the log
  bool recursive = true;
};
size_t SweepStrayTemps(const std::vector<SweepRoot>& roots, size_t max_entries, Logger& log);

// At most `max_bytes` of host-supplied text for an error message, with "..." when cut. Cuts only
// at a UTF-8 character boundary: half a character would make the JSON reply invalid UTF-8.
std::string ShortForMessage(std::string_view text, size_t max_bytes = 256);

// 16 random bytes as hex (handles, temp names).
std::string RandomHex();

}  // namespace kvm::files
