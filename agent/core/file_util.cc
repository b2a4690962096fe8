#include "agent/core/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace kvm {

std::optional<std::string> ReadSmallFile(const std::string& path, size_t max_bytes,
                                         int* error_number) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (error_number) *error_number = errno;
    return std::nullopt;
  }
  const bool kernel_file = path.rfind("/proc/", 0) == 0 || path.rfind("/sys/", 0) == 0;
  std::string out;
  char buf[8192];
  while (out.size() < max_bytes) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (error_number) *error_number = errno;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    // In /proc and /sys a short read is the end (seq_file fills the buffer until its records
    // run out): skip the read that would return 0. Elsewhere (a config given as a pipe) it
    // is not, so keep reading.
    if (kernel_file && static_cast<size_t>(n) < sizeof buf) break;
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

std::optional<std::string> RereadKernelFile(const std::string& path, UniqueFd& fd,
                                            size_t max_bytes) {
  if (!fd) fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  std::string out;
  char buf[8192];
  while (out.size() < max_bytes) {
    ssize_t n = ::pread(fd.get(), buf, sizeof buf, static_cast<off_t>(out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fd.reset();
      return std::nullopt;
    }
    out.append(buf, static_cast<size_t>(n));
    if (static_cast<size_t>(n) < sizeof buf) break;  // short read: the end (see ReadSmallFile)
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

}  // namespace kvm
