#include "agent/core/logger.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace kvm {

LogLevel ParseLogLevel(std::string_view name) {
  if (name == "trace") return LogLevel::kTrace;
  if (name == "debug") return LogLevel::kDebug;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  return LogLevel::kInfo;
}

Logger::~Logger() {
  if (file_) std::fclose(file_);
}

std::string Logger::OpenFile(const std::string& path) {
  std::FILE* opened = nullptr;
  if (!path.empty()) {
    // A new file is 0640 whatever the umask the agent was started with: the log names paths
    // and commands, and others must not rewrite it.
    // O_NONBLOCK for the open only: a FIFO with no reader fails (ENXIO) instead of blocking
    // the agent for ever with its stop signals still masked.
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                    0640);
    if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (fd < 0 || !(opened = ::fdopen(fd, "a"))) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      return "cannot open log file " + path + ": " + std::strerror(err);
    }
  }
  std::lock_guard lock(mutex_);
  if (file_) std::fclose(file_);
  file_ = opened;
  return {};
}

bool Logger::StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  struct stat st;
  if (!stream || ::fstat(2, &st) != 0) return false;
  unsigned long long dev = 0, ino = 0;
  return std::sscanf(stream, "%llu:%llu", &dev, &ino) == 2 &&
         dev == static_cast<unsigned long long>(st.st_dev) &&
         ino == static_cast<unsigned long long>(st.st_ino);
}

void Logger::Log(LogLevel level, const char* format, ...) {
  static constexpr const char* kNames[] = {"trace", "debug", "info", "warn", "error", "off"};
  char message[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof message, format, args);
  va_end(args);
  // Messages carry text from requests (paths, commands): a newline there would forge a log
  // line, an escape sequence would drive the terminal of whoever reads the log.
  for (char* c = message; *c; ++c) {
    if (static_cast<unsigned char>(*c) < 0x20 || *c == 0x7f) *c = '?';
  }

  timeval now;
  gettimeofday(&now, nullptr);
  tm local;
  localtime_r(&now.tv_sec, &local);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &local);

  std::lock_guard lock(mutex_);
  const char* name = kNames[static_cast<int>(level)];
  if (to_stderr_) {
    static constexpr const char* kPriorities[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<3>"};
    std::fprintf(stderr, "%skvmmanager-agent[%s] %s\n",
                 journal_priorities_ ? kPriorities[static_cast<int>(level)] : "", name, message);
  }
  if (file_) {
    std::fprintf(file_, "%s.%03ld %s %s\n", stamp, static_cast<long>(now.tv_usec / 1000), name,
                 message);
    std::fflush(file_);
  }
}

}  // namespace kvm
