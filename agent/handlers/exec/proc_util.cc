#include "agent/handlers/exec/proc_util.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "agent/core/file_util.h"

namespace kvm::exec {
namespace {

template <class T>
bool ParseNumber(std::string_view text, T& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n'; }

std::vector<std::string_view> SplitFields(std::string_view text) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && IsSpace(text[i])) ++i;
    size_t start = i;
    while (i < text.size() && !IsSpace(text[i])) ++i;
    if (i > start) fields.push_back(text.substr(start, i - start));
  }
  return fields;
}

}  // namespace

std::optional<ProcStat> ParseProcStat(std::string_view text) {
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
    return std::nullopt;
  }
  ProcStat st;
  std::string_view pid_text = text.substr(0, open);
  while (!pid_text.empty() && pid_text.back() == ' ') pid_text.remove_suffix(1);
  if (!ParseNumber(pid_text, st.pid)) return std::nullopt;
  st.comm = std::string(text.substr(open + 1, close - open - 1));
  auto f = SplitFields(text.substr(close + 1));
  // f[0] is field 3 of proc(5) (state); rss is field 24.
  if (f.size() < 22 || f[0].size() != 1) return std::nullopt;
  st.state = f[0][0];
  if (!ParseNumber(f[1], st.ppid) || !ParseNumber(f[2], st.pgid) || !ParseNumber(f[3], st.sid) ||
      !ParseNumber(f[6], st.flags) || !ParseNumber(f[11], st.utime_ticks) ||
      !ParseNumber(f[12], st.stime_ticks) || !ParseNumber(f[19], st.start_ticks) ||
      !ParseNumber(f[21], st.rss_pages)) {
    return std::nullopt;
  }
  return st;
}

std::optional<ProcStat> ReadProcStat(pid_t pid) {
  auto text = ReadSmallFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text) return std::nullopt;
  return ParseProcStat(*text);
}

std::vector<ProcStat> ReadProcessTable() {
  std::vector<ProcStat> table;
  DIR* dir = ::opendir("/proc");
  if (!dir) return table;
  while (dirent* entry = ::readdir(dir)) {
    pid_t pid;
    std::string_view name(entry->d_name);
    if (!ParseNumber(name, pid) || pid <= 0) continue;
    if (auto st = ReadProcStat(pid)) table.push_back(std::move(*st));
  }
  ::closedir(dir);
  return table;
}

namespace {
// The first number on the line of /proc/ID/status that starts with `key` ("Uid:", "Tgid:").
template <class T>
std::optional<T> StatusNumber(pid_t id, std::string_view key) {
  auto text = ReadSmallFile("/proc/" + std::to_string(id) + "/status", 16384);
  if (!text) return std::nullopt;
  size_t at = text->find("\n" + std::string(key));
  if (at == std::string::npos) return std::nullopt;
  size_t from = at + 1 + key.size();
  size_t end = text->find('\n', from);
  auto fields = SplitFields(std::string_view(*text).substr(from, end - from));
  T value;
  if (fields.empty() || !ParseNumber(fields[0], value)) return std::nullopt;
  return value;
}
}  // namespace

std::optional<uid_t> ReadProcUid(pid_t pid) { return StatusNumber<uid_t>(pid, "Uid:"); }

std::optional<pid_t> ReadProcTgid(pid_t id) { return StatusNumber<pid_t>(id, "Tgid:"); }

std::vector<std::string> ReadCmdline(pid_t pid, bool* truncated) {
  std::vector<std::string> args;
  auto text = ReadSmallFile("/proc/" + std::to_string(pid) + "/cmdline", kMaxCmdlineBytes + 1);
  if (!text) return args;
  bool cut = text->size() > kMaxCmdlineBytes;
  if (cut) text->resize(kMaxCmdlineBytes);
  if (truncated) *truncated = cut;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\0', start);
    if (end == std::string::npos) end = text->size();
    args.emplace_back(*text, start, end - start);
    start = end + 1;
  }
  return args;
}

namespace {
// Calls fn(fields) for each well-formed line of a passwd file.
template <class Fn>
void ForEachPasswdLine(const std::string& path, Fn fn) {
  auto text = ReadSmallFile(path, 4 << 20);
  if (!text) return;
  std::string_view rest(*text);
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (;;) {
      size_t colon = line.find(':', start);
      parts.push_back(line.substr(start, colon - start));
      if (colon == std::string_view::npos) break;
      start = colon + 1;
    }
    uid_t uid;
    if (parts.size() >= 7 && !parts[0].empty() && ParseNumber(parts[2], uid)) fn(parts, uid);
  }
}
}  // namespace

std::map<uid_t, std::string> ReadPasswd(const std::string& path) {
  std::map<uid_t, std::string> users;
  ForEachPasswdLine(path, [&](const std::vector<std::string_view>& parts, uid_t uid) {
    users.emplace(uid, std::string(parts[0]));  // first entry wins, like getpwuid
  });
  return users;
}

std::optional<std::string> HomeOf(uid_t uid, const std::string& path) {
  std::optional<std::string> home;
  ForEachPasswdLine(path, [&](const std::vector<std::string_view>& parts, uid_t line_uid) {
    if (!home && line_uid == uid && !parts[5].empty()) home = std::string(parts[5]);
  });
  return home;
}

std::vector<pid_t> CollectTree(pid_t leader, const std::vector<ProcStat>& table,
                               const std::map<pid_t, uint64_t>& known) {
  pid_t self = ::getpid();
  std::set<pid_t> members{leader};
  for (const auto& p : table) {
    auto it = known.find(p.pid);
    if (it != known.end() && it->second == p.start_ticks) members.insert(p.pid);
  }
  // Fixed point: a process is in the tree if its parent, group or session is.
  for (bool changed = true; changed;) {
    changed = false;
    for (const auto& p : table) {
      if (p.pid == self || p.pid <= 1 || members.count(p.pid)) continue;
      if (members.count(p.ppid) || members.count(p.pgid) || members.count(p.sid)) {
        members.insert(p.pid);
        changed = true;
      }
    }
  }
  return {members.begin(), members.end()};
}

std::vector<pid_t> SignalTree(pid_t leader, int signo, std::map<pid_t, uint64_t>* known) {
  // Freeze first: stopped processes neither fork nor exit, so the parent links that lead to
  // setsid()-ed descendants stay intact while the tree is collected.
  ::kill(-leader, SIGSTOP);
  std::set<pid_t> stopped;
  std::vector<pid_t> tree;
  std::vector<ProcStat> table;
  const std::map<pid_t, uint64_t> none;
  for (int round = 0; round < 8; ++round) {
    table = ReadProcessTable();
    tree = CollectTree(leader, table, known ? *known : none);
    bool grew = false;
    for (pid_t pid : tree) {
      if (stopped.insert(pid).second) {
        ::kill(pid, SIGSTOP);
        grew = true;
      }
    }
    if (!grew) break;
  }
  if (known) {
    for (const auto& p : table) {
      if (std::binary_search(tree.begin(), tree.end(), p.pid)) (*known)[p.pid] = p.start_ticks;
    }
  }
  ::kill(-leader, signo);
  for (pid_t pid : tree) ::kill(pid, signo);
  if (signo != SIGKILL && signo != SIGSTOP) {
    // Let them act on the signal (or ignore it and go on, if that is what they do).
    ::kill(-leader, SIGCONT);
    for (pid_t pid : stopped) ::kill(pid, SIGCONT);
  }
  return tree;
}

}  // namespace kvm::exec
