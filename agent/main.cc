// kvmmanager-agent: entry point. Flags, config, daemonizing; the rest is in Agent.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/core/unique_fd.h"
#include "agent/handlers/exec/command_policy.h"
#include "startup/malloc_tuning.h"
#include "startup/standard_fds.h"

namespace {

// Classic double fork, but the original process waits until the daemon is serving (or has
// failed), so `kvmmanager-agent` without --foreground still reports start-up errors.
// Returns the write end of the readiness pipe in the daemon; exits in the parent.
// A daemon outlives whoever started it: a lock, a pipe's write end or a socket it inherited
// would stay held for its whole life (a `flock` wrapper never released, a reader of the
// launcher's output never seeing EOF). Nothing of the agent's own is open yet.
void CloseInheritedFds() {
  if (::close_range(3, ~0U, 0) == 0) return;
  if (DIR* dir = ::opendir("/proc/self/fd")) {  // kernels before 5.9
    std::vector<int> fds;
    while (dirent* entry = ::readdir(dir)) {
      int fd = std::atoi(entry->d_name);
      if (fd > 2 && fd != ::dirfd(dir)) fds.push_back(fd);
    }
    ::closedir(dir);
    for (int fd : fds) ::close(fd);
  }
}

int Daemonize() {
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) {
    std::perror("kvmmanager-agent: pipe");
    std::exit(1);
  }
  pid_t child = ::fork();
  if (child < 0) {
    std::perror("kvmmanager-agent: fork");
    std::exit(1);
  }
  if (child > 0) {
    ::close(ready[1]);
    char status[512];
    ssize_t n = ::read(ready[0], status, sizeof status - 1);
    ::waitpid(child, nullptr, 0);
    if (n == 1 && status[0] == '0') std::exit(0);
    if (n > 0) {
      status[n] = '\0';
      std::fprintf(stderr, "kvmmanager-agent: %s\n", status[0] == '0' ? status + 1 : status);
    } else {
      std::fprintf(stderr, "kvmmanager-agent: daemon exited during start-up\n");
    }
    std::exit(1);
  }
  ::close(ready[0]);
  ::setsid();
  pid_t grandchild = ::fork();
  if (grandchild < 0) ::_exit(1);
  if (grandchild > 0) ::_exit(0);
  ::umask(022);
  if (::chdir("/") != 0) {
  }
  int null = ::open("/dev/null", O_RDWR);
  if (null >= 0) {
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    if (null > 2) ::close(null);
  }
  return ready[1];
}

void ReportReady(int fd, const std::string& error) {
  if (fd < 0) return;
  std::string message = error.empty() ? "0" : error;
  [[maybe_unused]] ssize_t n = ::write(fd, message.data(), message.size());
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  // get_system_info reports the system's zone (/etc/localtime); a TZ inherited from whoever
  // started the agent would pair that zone's name with another zone's offset. Cleared before
  // any thread exists (setenv/unsetenv are not thread-safe); commands get their own env.
  ::unsetenv("TZ");
  kvm::FillClosedStandardFds();  // else a socket could become "stderr" and receive the log
  kvm::TuneMallocForMessages();
  kvm::AgentOptions options;
  if (auto exit = kvm::ParseAgentOptions(argc, argv, options)) {
    std::fputs(exit->text.c_str(), exit->code == 0 ? stdout : stderr);
    return exit->code;
  }
  if (!options.foreground && !options.check_config) CloseInheritedFds();
  if (std::string err = kvm::MakeOptionPathsAbsolute(options); !err.empty()) {
    std::fprintf(stderr, "kvmmanager-agent: %s\n", err.c_str());
    return 1;
  }

  kvm::LoadedConfig loaded;
  try {
    loaded = kvm::LoadConfigFile(options.config_path);
  } catch (const kvm::ConfigError& e) {
    std::fprintf(stderr, "kvmmanager-agent: invalid config: %s\n", e.what());
    return 2;
  }
  std::vector<std::string> listening;  // each address as the agent would bind it
  for (const auto& listen : options.listen) {
    try {
      kvm::ListenAddress parsed = kvm::ParseListenAddress(listen);
      if (parsed.kind == kvm::ListenAddress::Kind::kUnix) {  // "/a/./x" and "/a//x" are "/a/x"
        parsed.path = std::filesystem::path(parsed.path).lexically_normal().string();
      }
      std::string address = parsed.ToString();
      if (std::find(listening.begin(), listening.end(), address) != listening.end()) {
        std::fprintf(stderr, "kvmmanager-agent: --listen %s is given twice\n", address.c_str());
        return 2;
      }
      listening.push_back(address);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvmmanager-agent: --listen: %s\n", e.what());
      return 2;
    }
  }
  if (options.check_config) {
    // The effective config: --log-level overrides the file's log_level.
    if (options.log_level) loaded.config.log_level = *options.log_level;
    for (const auto& warning : loaded.warnings)
      std::fprintf(stderr, "warning: %s\n", warning.c_str());
    // Valid JSON, but would it work? Only looked at, never created here.
    if (const std::string& file = loaded.config.log_file; !file.empty()) {
      struct stat st;
      std::string dir = file.substr(0, file.find_last_of('/') + 1);
      if (::stat(file.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        std::fprintf(stderr, "warning: log_file %s is a directory: nothing will be logged there\n",
                     file.c_str());
      } else if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        std::fprintf(stderr,
                     "warning: log_file %s: its directory does not exist: nothing will be "
                     "logged there\n",
                     file.c_str());
      } else {
        // Permissions as this user (run it as the agent's user), read-only or immutable
        // (EROFS, EPERM), a name too long: what open() would meet, without creating anything.
        bool exists = ::stat(file.c_str(), &st) == 0;
        int err = 0;
        if (file.size() - dir.size() > NAME_MAX) {
          err = ENAMETOOLONG;
        } else if (::faccessat(AT_FDCWD, exists ? file.c_str() : dir.c_str(),
                               exists ? W_OK : W_OK | X_OK, AT_EACCESS) != 0) {
          err = errno;
        }
        if (err != 0) {
          std::fprintf(stderr,
                       "warning: log_file %s cannot be opened for writing (%s): nothing will be "
                       "logged there\n",
                       file.c_str(), std::strerror(err));
        }
      }
    }
    // A whitelist entry that names no program here allows nothing (a typo, or not installed).
    if (const auto& whitelist = loaded.config.security.command_whitelist) {
      for (const std::string& entry : *whitelist) {
        try {
          kvm::exec::ResolveCommand(entry, "/");
        } catch (const std::exception& e) {
          std::fprintf(stderr,
                       "warning: security.command_whitelist entry \"%s\" allows nothing here: "
                       "%s\n",
                       entry.c_str(), e.what());
        }
      }
    }
    if (!loaded.file_found) {
      std::fprintf(stderr, "note: %s not found; these are the defaults\n",
                   options.config_path.c_str());
    }
    std::printf("%s\n", kvm::ConfigToJson(loaded.config).c_str());
    return 0;
  }

  // Signals are taken through a signalfd; block them before any thread exists. SIGPIPE is
  // ignored so a vanished client shows up as EPIPE instead of killing the agent.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // Before daemonizing, so that a log_file that cannot be opened and the config's warnings
  // reach whoever starts the daemon: afterwards its stderr is /dev/null.
  kvm::Logger log;
  log.set_journal_priorities(kvm::Logger::StderrIsJournal());
  kvm::ApplyLogSettings(options, loaded.config, log);
  for (const auto& warning : loaded.warnings) LOG_WARN(log, "%s", warning.c_str());
  if (!loaded.file_found) {
    LOG_INFO(log, "config %s not found; using built-in defaults", options.config_path.c_str());
  }
  int ready_fd = options.foreground ? -1 : Daemonize();
  if (!options.foreground) log.set_stderr(false);

  try {
    kvm::Agent agent(options, loaded.config, log);
    agent.Start();
    ReportReady(ready_fd, "");
    return agent.Run();
  } catch (const std::exception& e) {
    LOG_ERROR(log, "fatal: %s", e.what());
    ReportReady(ready_fd, e.what());
    if (options.foreground && log.level() == kvm::LogLevel::kOff) {
      std::fprintf(stderr, "kvmmanager-agent: fatal: %s\n", e.what());
    }
    return 1;
  }
}
