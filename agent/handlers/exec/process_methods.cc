// process_list and process_kill: the guest's processes, from /proc.
#include <limits.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>

#include "agent/core/file_util.h"
#include "agent/core/unique_fd.h"
#include "agent/handlers/exec/command_policy.h"
#include "agent/handlers/exec/execution.h"
#include "agent/handlers/exec/proc_util.h"
#include "agent/handlers/register_all.h"
#include "protocol/errors.h"
#include "protocol/params.h"

namespace kvm {
namespace json = boost::json;
using namespace exec;

namespace {

// Boot time (unix seconds) from /proc/stat, to turn start ticks into a wall-clock time.
int64_t BootTime() {
  auto text = ReadSmallFile("/proc/stat", 1 << 20);
  if (!text) return 0;
  size_t at = text->find("\nbtime ");
  if (at == std::string::npos) return 0;
  return std::strtoll(text->c_str() + at + 7, nullptr, 10);
}

json::value ProcessList(const json::object& params, RequestContext&) {
  Params p(params, {});
  auto users = ReadPasswd();
  int64_t ticks = ::sysconf(_SC_CLK_TCK);
  int64_t page = ::sysconf(_SC_PAGESIZE);
  int64_t boot = BootTime();
  json::array list;
  for (const auto& st : ReadProcessTable()) {
    json::array cmdline;
    bool cut = false;
    for (auto& arg : ReadCmdline(st.pid, &cut)) cmdline.emplace_back(std::move(arg));
    auto uid = ReadProcUid(st.pid);
    json::value user = nullptr;
    if (uid) {
      auto it = users.find(*uid);
      user = it != users.end() ? json::value(it->second) : json::value(std::to_string(*uid));
    }
    json::object item{
        {"pid", st.pid},
        {"ppid", st.ppid},
        {"uid", uid ? json::value(*uid) : json::value(nullptr)},
        {"user", std::move(user)},
        {"state", std::string(1, st.state)},
        {"name", st.comm},
        {"cmdline", std::move(cmdline)},
        {"cpu_time_ms", (st.utime_ticks + st.stime_ticks) * 1000 / static_cast<uint64_t>(ticks)},
        {"rss_bytes", st.rss_pages * page},
        {"start_time", boot + static_cast<int64_t>(st.start_ticks) / ticks},
        {"kernel_thread", st.kernel_thread()},
    };
    if (cut) item["cmdline_truncated"] = true;
    list.push_back(std::move(item));
  }
  size_t count = list.size();
  return json::object{{"processes", std::move(list)}, {"count", count}};
}

[[noreturn]] void Refuse(pid_t pid, const std::string& why, std::string_view reason) {
  throw RpcError(ErrorCode::kPermissionDenied,
                 "process_kill refused for pid " + std::to_string(pid) + ": " + why,
                 {{"policy", "process_kill"}, {"pid", pid}, {"reason", reason}});
}

json::value ProcessKill(const json::object& params, RequestContext& ctx) {
  Params p(params, {"pid", "signal"});
  auto pid = static_cast<pid_t>(p.RequiredInt("pid", 1, INT_MAX));
  int signo = SignalParam(params, SIGTERM);
  // Everything below is checked on the process the pidfd refers to, and the signal is sent
  // through it: a pid reused between the checks and the kill cannot be hit.
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) {
    int err = errno;
    // A thread id (a /proc/PID/task entry) is no process: pidfd_open refuses it (ENOENT or
    // EINVAL, by kernel version), and the signal would hit its whole process anyway.
    if (auto tgid = ReadProcTgid(pid); tgid && *tgid != pid) {
      throw RpcError(ErrorCode::kNotFound,
                     "No process " + std::to_string(pid) + ": it is a thread id of process " +
                         std::to_string(*tgid) + ", not a process id",
                     {{"pid", pid}, {"thread_of", *tgid}});
    }
    if (err == ESRCH || err == EINVAL || err == ENOENT) {
      throw RpcError(ErrorCode::kNotFound, "No process " + std::to_string(pid), {{"pid", pid}});
    }
    throw RpcError(ErrorCode::kIoError, std::string("pidfd_open: ") + std::strerror(err),
                   {{"pid", pid}, {"errno", err}, {"detail", std::strerror(err)}});
  }
  if (pid == 1) Refuse(pid, "init is never signalled", "init");
  if (pid == ::getpid()) Refuse(pid, "the agent does not signal itself", "agent");
  auto st = ReadProcStat(pid);
  if (!st)
    throw RpcError(ErrorCode::kNotFound, "No process " + std::to_string(pid), {{"pid", pid}});
  if (st->kernel_thread()) Refuse(pid, "kernel threads are never signalled", "kernel_thread");
  const auto& whitelist = ctx.config().security.command_whitelist;
  std::string exe;
  char buf[PATH_MAX];
  ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf - 1);
  if (n > 0) exe.assign(buf, static_cast<size_t>(n));
  if (whitelist && (exe.empty() || !WhitelistAllowsExecutable(whitelist, exe))) {
    throw RpcError(ErrorCode::kPermissionDenied,
                   "process_kill refused for pid " + std::to_string(pid) +
                       ": its executable is not in security.command_whitelist",
                   {{"policy", "command_whitelist"}, {"pid", pid}, {"executable", exe}});
  }
  if (::syscall(SYS_pidfd_send_signal, pidfd.get(), signo, nullptr, 0) != 0) {
    int err = errno;
    if (err == ESRCH) {
      throw RpcError(ErrorCode::kNotFound, "Process " + std::to_string(pid) + " has exited",
                     {{"pid", pid}});
    }
    throw RpcError(ErrorCode::kIoError, std::string("kill: ") + std::strerror(err),
                   {{"pid", pid}, {"errno", err}, {"detail", std::strerror(err)}});
  }
  LOG_INFO(ctx.log(), "process_kill: sent %s to pid %d (%s)", SignalName(signo).c_str(),
           static_cast<int>(pid), st->comm.c_str());
  return json::object{
      {"pid", pid}, {"signal", signo}, {"signal_name", SignalName(signo)}, {"name", st->comm}};
}

}  // namespace

void RegisterProcessMethods(MethodTable& table) {
  table.Add("process_list", RunMode::kWorker, ProcessList);
  table.Add("process_kill", RunMode::kWorker, ProcessKill);
}

}  // namespace kvm
