#include "agent/core/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace kvm {

namespace {

// Reads from offset 0 (pread) or from the current position (read) until EOF or max_bytes. In
// /proc and /sys a short read is the end (seq_file fills the buffer until its records run
// out), so `short_read_ends` skips the read that would return 0; elsewhere (a config given as
// a pipe) it is not the end.
std::optional<std::string> ReadUpTo(int fd, size_t max_bytes, bool positional, bool short_read_ends,
                                    int* error_number) {
  std::string out;
  char buf[8192];
  while (out.size() < max_bytes) {
    ssize_t n = positional ? ::pread(fd, buf, sizeof buf, static_cast<off_t>(out.size()))
                           : ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (error_number) *error_number = errno;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (short_read_ends && static_cast<size_t>(n) < sizeof buf) break;
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

}  // namespace

std::optional<std::string> ReadSmallFile(const std::string& path, size_t max_bytes,
                                         int* error_number) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (error_number) *error_number = errno;
    return std::nullopt;
  }
  const bool kernel_file = path.rfind("/proc/", 0) == 0 || path.rfind("/sys/", 0) == 0;
  return ReadUpTo(fd.get(), max_bytes, false, kernel_file, error_number);
}

std::optional<std::string> RereadKernelFile(const std::string& path, UniqueFd& fd,
                                            size_t max_bytes) {
  if (!fd) fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  auto text = ReadUpTo(fd.get(), max_bytes, true, true, nullptr);
  if (!text) fd.reset();
  return text;
}

}  // namespace kvm
