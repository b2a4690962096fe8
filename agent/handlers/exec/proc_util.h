// Reading /proc: one process's stat line, the whole process table, user names from
// /etc/passwd (parsed here: NSS calls break in the static agent), and killing a process tree.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvm::exec {

// The fields of /proc/PID/stat (and a few of /proc/PID/status) this module needs.
struct ProcStat {
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t pgid = 0;
  pid_t sid = 0;
  char state = '?';
  std::string comm;
  uint64_t flags = 0;
  uint64_t utime_ticks = 0;
  uint64_t stime_ticks = 0;
  uint64_t start_ticks = 0;  // since boot
  int64_t rss_pages = 0;

  bool kernel_thread() const { return (flags & 0x00200000) != 0; }  // PF_KTHREAD
};

// Parses the text of /proc/PID/stat (comm may hold spaces and parentheses).
std::optional<ProcStat> ParseProcStat(std::string_view text);
std::optional<ProcStat> ReadProcStat(pid_t pid);
// Every process (thread-group leaders only) currently in /proc.
std::vector<ProcStat> ReadProcessTable();

// The real uid of a process from /proc/PID/status, or nullopt.
std::optional<uid_t> ReadProcUid(pid_t pid);
// argv of a process (empty for kernel threads and zombies), its first kMaxCmdlineBytes at most;
// `truncated` (if given) is set when there was more.
inline constexpr size_t kMaxCmdlineBytes = 64 * 1024;
std::vector<std::string> ReadCmdline(pid_t pid, bool* truncated = nullptr);
// The thread group (process) id of a pid or thread id, from /proc/ID/status; nullopt if none.
std::optional<pid_t> ReadProcTgid(pid_t id);

// uid -> name from /etc/passwd (or another file in tests).
std::map<uid_t, std::string> ReadPasswd(const std::string& path = "/etc/passwd");
// The home directory of `uid` in /etc/passwd, or nullopt.
std::optional<std::string> HomeOf(uid_t uid, const std::string& path = "/etc/passwd");

// Every process that belongs to the tree led by `leader`: members of its process group,
// descendants by parent links (also those that called setsid/setpgid), and the groups and
// sessions those descendants lead. Never includes pid 1 or the calling process.
// `known` (pid -> start time) adds members found earlier, also once their parent links are
// gone (the leader died of a SIGTERM that they ignore): a pid reused since is not taken.
std::vector<pid_t> CollectTree(pid_t leader, const std::vector<ProcStat>& table,
                               const std::map<pid_t, uint64_t>& known = {});

// Signals the group `leader` and every process CollectTree finds (sorted pids, returned).
// With `known`, it seeds the tree and records every member found, for the next signal.
std::vector<pid_t> SignalTree(pid_t leader, int signo, std::map<pid_t, uint64_t>* known = nullptr);

}  // namespace kvm::exec
