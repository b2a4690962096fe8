// Leveled log lines to stderr (journald picks them up) and, if configured, to a log file.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>

namespace kvm {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

LogLevel ParseLogLevel(std::string_view name);  // unknown names mean kInfo

// printf-style on purpose: spdlog/fmt would add ~0.6 MB to the static agent (measured).
// Thread-safe; one object owned by main and passed to whoever logs.
class Logger {
 public:
  Logger() = default;
  ~Logger();
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  void set_level(LogLevel level) { level_ = level; }
  LogLevel level() const { return level_; }
  bool enabled(LogLevel level) const { return level >= level_ && level_ != LogLevel::kOff; }

  // Opens (or reopens, after SIGHUP/logrotate) the log file; "" closes it. Returns an error text
  // on failure, empty on success; on failure the file open before (if any) stays in use.
  std::string OpenFile(const std::string& path);
  bool has_file() {
    std::lock_guard lock(mutex_);
    return file_ != nullptr;
  }
  void set_stderr(bool on) { to_stderr_ = on; }
  // Under systemd, stderr is a journal stream ($JOURNAL_STREAM names it): each line then starts
  // with its syslog priority (<3> error ... <7> debug), which journald takes as the entry's
  // priority instead of info for all (journalctl -p warning finds the warnings).
  void set_journal_priorities(bool on) { journal_priorities_ = on; }
  // True when fd 2 is the stream $JOURNAL_STREAM names.
  static bool StderrIsJournal();

  void Log(LogLevel level, const char* format, ...) __attribute__((format(printf, 3, 4)));

 private:
  LogLevel level_ = LogLevel::kInfo;
  bool to_stderr_ = true;
  bool journal_priorities_ = false;
  std::FILE* file_ = nullptr;
  std::mutex mutex_;
};

#define KVM_LOG(logger, level, ...)                      \
  do {                                                   \
    if ((logger).enabled(::kvm::LogLevel::level))        \
      (logger).Log(::kvm::LogLevel::level, __VA_ARGS__); \
  } while (0)
#define LOG_TRACE(logger, ...) KVM_LOG(logger, kTrace, __VA_ARGS__)
#define LOG_DEBUG(logger, ...) KVM_LOG(logger, kDebug, __VA_ARGS__)
#define LOG_INFO(logger, ...) KVM_LOG(logger, kInfo, __VA_ARGS__)
#define LOG_WARN(logger, ...) KVM_LOG(logger, kWarn, __VA_ARGS__)
#define LOG_ERROR(logger, ...) KVM_LOG(logger, kError, __VA_ARGS__)

}  // namespace kvm
