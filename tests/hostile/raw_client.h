// A deliberately low-level client for hostile tests: raw bytes, partial writes, half-closes,
// and a look at the agent process from /proc.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>

namespace kvm::test {

class RawClient {
 public:
  explicit RawClient(const std::string& socket_path);
  ~RawClient();
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Writes everything (blocking); false if the peer went away.
  bool Send(std::string_view bytes);
  // Writes as much as fits without blocking; returns the count written.
  size_t SendSome(std::string_view bytes);
  // Next line without its '\n'; empty optional-like: returns false on timeout or EOF.
  bool ReadLine(std::string& line, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // True when the agent closed its side (read returns 0) within the timeout.
  bool WaitEof(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void ShutdownWrite();
  void SetNonBlocking();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string buffer_;
};

// Sanitizer builds (scripts/test-sanitizers.sh) hold freed memory in quarantine, so the agent's
// RSS says nothing about leaks there: memory bounds are checked in plain builds only.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitizedBuild = true;
#else
inline constexpr bool kSanitizedBuild = false;
#endif

// Resident set size of a process in KiB, and its open file descriptor count.
long RssKib(pid_t pid);
int OpenFdCount(pid_t pid);
// The fewest open fds seen over ~100 ms: a baseline that a descriptor the agent holds for a
// moment (its orphan reaper reads /proc every 2 s) does not inflate.
int SettledFdCount(pid_t pid);

}  // namespace kvm::test
