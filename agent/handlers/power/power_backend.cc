#include "agent/handlers/power/power_backend.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <spawn.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <utmp.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "agent/core/file_util.h"
#include "agent/core/unique_fd.h"
#include "protocol/errors.h"

extern char** environ;

namespace kvm::power {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Base name of the file a path finally resolves to ("systemctl" for /sbin/shutdown on systemd).
std::string ResolvedBaseName(const std::string& path) {
  char buffer[PATH_MAX];
  if (!::realpath(path.c_str(), buffer)) return {};
  const char* slash = std::strrchr(buffer, '/');
  return slash ? slash + 1 : buffer;
}

// The signal busybox's poweroff/reboot/halt send to PID 1 when not forced.
int BusyboxSignal(Action action) {
  switch (action) {
    case Action::kPowerOff:
      return SIGUSR2;
    case Action::kReboot:
      return SIGTERM;
    case Action::kHalt:
      return SIGUSR1;
  }
  return SIGUSR2;
}

// One hex mask line ("SigCgt:", "SigBlk:") of /proc/PID/status; 0 when absent.
unsigned long long StatusMask(const std::string& status, const char* key) {
  size_t at = status.find(std::string("\n") + key);
  if (at == std::string::npos) return 0;
  const char* hex = status.c_str() + at + 1 + std::strlen(key);
  while (*hex == ' ' || *hex == '\t') ++hex;
  errno = 0;
  char* end = nullptr;
  unsigned long long mask = std::strtoull(hex, &end, 16);
  return end == hex || errno != 0 ? 0 : mask;
}

// Whether PID 1 takes `signo`; the kernel drops any other signal sent to PID 1, so busybox's
// unforced poweroff would silently do nothing when PID 1 is, e.g., a shell script.
// - busybox init (PID 1 is busybox run as "init"/"linuxrc") always takes USR1/USR2/TERM. It
//   collects them with sigtimedwait, during which /proc shows them neither blocked nor caught
//   (seen in the test VM: SigBlk 0, SigCgt only SIGTSTP), hence the name check.
// - anything else: it has a handler (SigCgt; a shell's `trap`) or blocks the signal (SigBlk;
//   e.g. a signalfd-based init).
bool InitCatches(const Environment& env, int signo, const std::string& init_exe) {
  if (init_exe == "busybox") {
    auto cmdline = ReadSmallFile(env.Path("/proc/1/cmdline"), 4096).value_or("");
    std::string argv0 = cmdline.substr(0, cmdline.find('\0'));
    std::string applet = argv0.substr(argv0.rfind('/') + 1);
    if (applet == "init" || applet == "linuxrc") return true;
  }
  auto status = ReadSmallFile(env.Path("/proc/1/status"), 16 * 1024);
  if (!status) return false;
  unsigned long long mask = StatusMask(*status, "SigCgt:") | StatusMask(*status, "SigBlk:");
  return (mask >> (signo - 1)) & 1;
}

boost::json::array CheckedList() {
  return {"/run/systemd/system + systemctl", "shutdown (SysV)", "busybox"};
}

}  // namespace

const char* ActionName(Action action) {
  switch (action) {
    case Action::kPowerOff:
      return "poweroff";
    case Action::kReboot:
      return "reboot";
    case Action::kHalt:
      return "halt";
  }
  return "poweroff";
}

Environment Environment::Production() {
  Environment env;
  env.program_dirs = {"/usr/sbin", "/usr/bin", "/sbin", "/bin"};
  return env;
}

Environment Environment::ForTest(const std::string& dir) {
  Environment env;
  env.root = dir;
  env.program_dirs = {dir + "/bin"};
  env.test_mode = true;
  return env;
}

Environment Environment::FromProcessEnvironment() {
  const char* dir = std::getenv("KVM_AGENT_POWER_TEST_DIR");
  if (dir && dir[0] == '/' && IsDirectory(dir)) return ForTest(dir);
  return Production();
}

std::string Environment::FindProgram(std::string_view name) const {
  for (const auto& dir : program_dirs) {
    std::string path = dir + "/" + std::string(name);
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0)
      return path;
  }
  return {};
}

Privileges Privileges::OfThisProcess() {
  Privileges p;
  p.root = ::geteuid() == 0;
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) == 0) {
    p.cap_sys_boot = (data[CAP_TO_INDEX(CAP_SYS_BOOT)].effective & CAP_TO_MASK(CAP_SYS_BOOT)) != 0;
  }
  return p;
}

Plan ChoosePlan(const Environment& env, const Privileges& privileges, Action action, bool force,
                const std::string& message) {
  Plan plan;
  plan.action = action;
  const char* name = ActionName(action);
  if (force) {
    if (!privileges.cap_sys_boot) {
      throw RpcError(
          ErrorCode::kPermissionDenied,
          std::string("force ") + name + " needs CAP_SYS_BOOT, which the agent does not have",
          {{"policy", "CAP_SYS_BOOT"}, {"action", name}});
    }
    plan.method = "syscall";
    return plan;
  }
  if (IsDirectory(env.Path("/run/systemd/system"))) {
    if (std::string systemctl = env.FindProgram("systemctl"); !systemctl.empty()) {
      // Non-root is fine here: logind asks polkit (see packaging/power/).
      plan.method = "systemd";
      plan.argv = {systemctl, name};
      if (!message.empty()) plan.argv.push_back("--message=" + message);
      return plan;
    }
  }
  auto need_root = [&](const char* method) {
    if (!privileges.root) {
      throw RpcError(ErrorCode::kPermissionDenied,
                     std::string(method) +
                         " power actions need root; without systemd a "
                         "non-root agent can only use force (CAP_SYS_BOOT)",
                     {{"policy", "root"}, {"method", method}, {"action", name}});
    }
  };
  if (std::string shutdown = env.FindProgram("shutdown"); !shutdown.empty()) {
    std::string real = ResolvedBaseName(shutdown);
    // On systemd machines shutdown is systemctl (useless when systemd is not running);
    // busybox has no shutdown applet worth using.
    if (real != "systemctl" && real != "busybox") {
      need_root("sysv");
      plan.method = "sysv";
      switch (action) {
        case Action::kPowerOff:
          plan.argv = {shutdown, "-h", "-P", "now"};
          break;
        case Action::kReboot:
          plan.argv = {shutdown, "-r", "now"};
          break;
        case Action::kHalt:
          plan.argv = {shutdown, "-h", "-H", "now"};
          break;
      }
      return plan;
    }
  }
  std::string init_note;
  if (std::string busybox = env.FindProgram("busybox"); !busybox.empty()) {
    std::string init = ResolvedBaseName(env.Path("/proc/1/exe"));
    if (InitCatches(env, BusyboxSignal(action), init)) {
      need_root("busybox");
      plan.method = "busybox";
      plan.argv = {busybox, name};
      return plan;
    }
    // PID 1 would drop busybox's signal. If PID 1 is busybox itself (an initramfs whose /init
    // is a busybox shell script) there is no init to stop services: busybox's own -f path
    // (sync + reboot(2)) is the whole shutdown. Any other PID 1 (a container's process
    // manager, an unknown init) is not ours to bypass without an explicit force.
    if (init == "busybox") {
      if (!privileges.cap_sys_boot) {
        throw RpcError(ErrorCode::kPermissionDenied,
                       std::string("PID 1 (busybox sh) does not handle busybox's ") + name +
                           " signal, and reboot(2) needs CAP_SYS_BOOT, which the agent lacks",
                       {{"policy", "CAP_SYS_BOOT"}, {"method", "busybox-force"}, {"action", name}});
      }
      plan.method = "busybox-force";
      plan.argv = {busybox, name, "-f"};
      return plan;
    }
    init_note = "; busybox found, but PID 1 (" + (init.empty() ? std::string("unknown") : init) +
                ") does not handle its " + name + " signal";
  }
  throw RpcError(ErrorCode::kUnsupported,
                 std::string("No way to ") + name +
                     " this system gracefully: no running systemd, no SysV shutdown, no usable "
                     "busybox" +
                     init_note + " (force=true calls reboot(2) directly)",
                 {{"action", name}, {"checked", CheckedList()}});
}

pid_t SpawnPlan(const Plan& plan, int* stderr_fd, std::string* error) {
  *stderr_fd = -1;
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + std::strerror(errno);
    return -1;
  }
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);

  // The agent blocks SIGTERM/SIGINT/SIGHUP and ignores SIGPIPE; the child must not inherit that.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args;
  for (const auto& a : plan.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    *error = "cannot start " + plan.argv[0] + ": " + std::strerror(rc);
    return -1;
  }
  *stderr_fd = read_end.release();
  return pid;
}

Outcome ForcedReboot(const Environment& env, Action action) {
  int cmd = RB_POWER_OFF;
  const char* cmd_name = "RB_POWER_OFF";
  if (action == Action::kReboot) {
    cmd = RB_AUTOBOOT;
    cmd_name = "RB_AUTOBOOT";
  } else if (action == Action::kHalt) {
    cmd = RB_HALT_SYSTEM;
    cmd_name = "RB_HALT_SYSTEM";
  }
  ::sync();
  if (env.test_mode) {
    std::string line = std::string("sync+reboot(") + cmd_name + ")\n";
    UniqueFd fd(::open(env.Path("/reboot-syscall.log").c_str(),
                       O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!fd || ::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
      return {false, std::string("test mode: cannot record reboot(2): ") + std::strerror(errno)};
    return {true, std::string("test mode: recorded reboot(") + cmd_name + ")"};
  }
  ::reboot(cmd);
  return {false, std::string("reboot(") + cmd_name + ") failed: " + std::strerror(errno)};
}

std::string SanitizeForTerminal(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 8);
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\r\n";
    } else if (c == '\t') {
      out += c;
    } else if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else if (c == 0xc2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      out += '?';  // U+0080..U+009F: C1 controls (CSI is U+009B)
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::vector<std::string> LoggedInTerminals(const Environment& env) {
  std::vector<std::string> lines;
  auto data = ReadSmallFile(env.Path("/run/utmp"), 4 << 20);
  if (!data) data = ReadSmallFile(env.Path("/var/run/utmp"), 4 << 20);
  if (!data) return lines;
  for (size_t off = 0; off + sizeof(struct utmp) <= data->size(); off += sizeof(struct utmp)) {
    struct utmp entry;
    std::memcpy(&entry, data->data() + off, sizeof entry);
    if (entry.ut_type != USER_PROCESS) continue;
    std::string line(entry.ut_line, strnlen(entry.ut_line, sizeof entry.ut_line));
    // utmp is root's, but never let it point the agent outside /dev.
    if (line.empty() || line[0] == '/' || line.find("..") != std::string::npos) continue;
    bool seen = false;
    for (const auto& l : lines) seen = seen || l == line;
    if (!seen) lines.push_back(std::move(line));
  }
  return lines;
}

int BroadcastToTerminals(const Environment& env, const std::string& text) {
  int delivered = 0;
  for (const auto& line : LoggedInTerminals(env)) {
    // Non-blocking: a stuck terminal must not hold up the reply.
    UniqueFd fd(::open(env.Path("/dev/" + line).c_str(),
                       O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) continue;
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) continue;
    if (!S_ISCHR(st.st_mode) && !(env.test_mode && S_ISREG(st.st_mode))) continue;
    if (::write(fd.get(), text.data(), text.size()) > 0) ++delivered;
  }
  return delivered;
}

}  // namespace kvm::power
