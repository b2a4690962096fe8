// exec_command, exec_start/exec_status/exec_kill/exec_list: running commands in the guest.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>

#include "agent/handlers/exec/command_policy.h"
#include "agent/handlers/exec/exec_state.h"
#include "agent/handlers/exec/execution.h"
#include "agent/handlers/exec/proc_util.h"
#include "agent/core/message_limits.h"
#include "agent/handlers/register_all.h"
#include "protocol/base64.h"
#include "protocol/errors.h"
#include "protocol/params.h"

namespace kvm {
namespace json = boost::json;
using namespace exec;

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kDefaultOutputBytes = 1 << 20;
constexpr uint64_t kMaxOutputBytes = 4 << 20;
constexpr uint64_t kMinStreamBuffer = 4096;
constexpr int64_t kMaxWaitMs = 10000;
constexpr size_t kMaxArgs = 4096;

void CheckNoNul(std::string_view name, std::string_view value) {
  if (value.find('\0') != std::string_view::npos) {
    Params::Fail(name, "strings without NUL characters");
  }
}

// The environment a command starts with: a fixed minimal set, then the request's `env`
// (without variables that would let an allowed program run other code, under a whitelist).
std::vector<std::string> BuildEnv(const json::object* request_env,
                                  const std::optional<std::vector<std::string>>& whitelist) {
  std::vector<std::pair<std::string, std::string>> vars{
      {"PATH", kSearchPath},
      {"HOME", HomeOf(::getuid()).value_or("/")},
      {"LANG", "C.UTF-8"},
  };
  if (request_env) {
    // Bounded like args: each variable below is looked up among those before it.
    if (request_env->size() > kMaxArgs) Params::Fail("env", "at most 4096 variables");
    for (const auto& [key, value] : *request_env) {
      std::string_view k(key);
      if (k.empty() || k.find('=') != std::string_view::npos ||
          k.find('\0') != std::string_view::npos) {
        Params::Fail("env", "an object whose keys are non-empty names without '=' or NUL");
      }
      if (!value.is_string()) Params::Fail("env", "an object of string values");
      CheckNoNul("env", value.get_string());
      CheckEnvVariable(whitelist, k, value.get_string());
      auto it = std::find_if(vars.begin(), vars.end(), [&](auto& v) { return v.first == k; });
      if (it != vars.end()) {
        it->second = std::string(value.get_string());
      } else {
        vars.emplace_back(std::string(k), std::string(value.get_string()));
      }
    }
  }
  std::vector<std::string> env;
  for (auto& [k, v] : vars) env.push_back(k + "=" + v);
  return env;
}

std::string CheckCwd(const std::optional<std::string>& cwd) {
  if (!cwd) return "/";
  CheckNoNul("cwd", *cwd);
  if (cwd->empty() || (*cwd)[0] != '/') Params::Fail("cwd", "an absolute directory path");
  struct stat st;
  if (::stat(cwd->c_str(), &st) != 0) {
    int err = errno;
    throw RpcError(ErrorCode::kNotFound, "Working directory not found: " + *cwd,
                   {{"param", "cwd"}, {"path", *cwd}, {"errno", err}});
  }
  if (!S_ISDIR(st.st_mode)) Params::Fail("cwd", "an existing directory");
  return *cwd;
}

// Validates the params shared by exec_command and exec_start, resolves the command and
// applies the whitelist.
ExecRequest BuildRequest(const Params& p, const Config& config, bool streaming) {
  ExecRequest r;
  r.streaming = streaming;
  r.command = p.RequiredString("command");
  const auto& whitelist = config.security.command_whitelist;
  if (whitelist && r.command.find('\0') != std::string::npos) {
    // Cannot name any allowed program; refused as the policy, not as a typo.
    throw RpcError(ErrorCode::kPermissionDenied,
                   "Command not allowed by security.command_whitelist (contains NUL)",
                   {{"policy", "command_whitelist"}, {"command", r.command}});
  }
  r.args = p.OptionalStringArray("args").value_or(std::vector<std::string>{});
  if (r.args.size() > kMaxArgs) Params::Fail("args", "at most 4096 strings");
  for (const auto& a : r.args) CheckNoNul("args", a);
  r.cwd = CheckCwd(p.OptionalString("cwd"));
  r.env = BuildEnv(p.OptionalObject("env"), whitelist);
  if (auto input = p.OptionalString("input")) {
    std::string bytes;
    if (!Base64Decode(*input, bytes)) Params::Fail("input", "base64 (RFC 4648, padded)");
    r.input = std::move(bytes);
  }
  int64_t max_timeout = config.security.max_command_timeout_seconds;
  int64_t default_timeout =
      streaming ? max_timeout : std::min(config.request_timeout_seconds, max_timeout);
  int64_t timeout = p.OptionalInt("timeout_seconds", 1, 7 * 24 * 3600).value_or(default_timeout);
  r.timeout = std::chrono::seconds(std::min(timeout, max_timeout));
  uint64_t cap = p.OptionalUint("max_output_bytes", kMaxOutputBytes).value_or(kDefaultOutputBytes);
  if (streaming && cap < kMinStreamBuffer) {
    Params::Fail("max_output_bytes", "an integer in [4096, 4194304] for exec_start");
  }
  r.max_output_bytes = cap;
  r.resolved = ResolveCommand(r.command, r.cwd);
  CheckWhitelist(whitelist, r.command, r.resolved);
  return r;
}

json::value ExecCommand(ExecState& state, const json::object& params, RequestContext& ctx) {
  Params p(params,
           {"command", "args", "env", "cwd", "input", "timeout_seconds", "max_output_bytes"});
  ExecRequest request = BuildRequest(p, ctx.config(), false);
  // The dispatcher must not answer "timeout" before the command's own timeout and kill grace.
  ctx.ExtendDeadline(request.timeout + 3 * kKillGrace + std::chrono::seconds(2));
  Execution exec(request);
  state.AddChild(exec.pid());
  // Audit trail: what ran, as what, for how long and how it ended.
  LOG_INFO(ctx.log(), "exec_command: %s (%zu args) pid %d", request.resolved.real_path.c_str(),
           request.args.size(), static_cast<int>(exec.pid()));
  bool abandoned = false;
  while (!exec.Pump(std::chrono::milliseconds(200))) {
    if (!abandoned && ctx.abandoned()) {
      // Nobody will read the answer: do not leave the command running.
      exec.Kill(SIGKILL);
      abandoned = true;
    }
  }
  state.RemoveChild(exec.pid());
  json::object result = exec.FinalResult();
  LOG_INFO(ctx.log(), "exec_command: pid %d ended: %s after %lld ms%s",
           static_cast<int>(exec.pid()),
           json::serialize(result["signal"].is_null() ? result["exit_code"] : result["signal_name"])
               .c_str(),
           static_cast<long long>(result["duration_ms"].as_int64()),
           result["timed_out"].as_bool() ? " (timed out)" : "");
  result["pid"] = exec.pid();
  return result;
}

json::value ExecStart(ExecState& state, const json::object& params, RequestContext& ctx) {
  Params p(params, {"command", "args", "env", "cwd", "input", "timeout_seconds", "max_output_bytes",
                    "retain_seconds", "keep_stdin_open"});
  ExecRequest request = BuildRequest(p, ctx.config(), true);
  request.keep_stdin_open = p.OptionalBool("keep_stdin_open").value_or(false);
  auto retain = std::chrono::seconds(
      p.OptionalInt("retain_seconds", 1, kMaxRetainSeconds).value_or(kDefaultRetainSeconds));
  // Taken before the spawn (and given back if it fails): busy means nothing ran.
  HandleSlot slot = state.Reserve();
  auto exec = std::make_unique<Execution>(request);
  pid_t pid = exec->pid();
  auto handle =
      state.Adopt(std::move(slot), std::move(exec), request.command, request.args, retain);
  LOG_INFO(ctx.log(), "exec_start: handle %llu %s pid %d",
           static_cast<unsigned long long>(handle->id), request.resolved.real_path.c_str(),
           static_cast<int>(pid));
  json::object result{{"handle", handle->id}, {"pid", pid}};
  // The most raw bytes one exec_input can carry within max_message_size_kb.
  if (request.keep_stdin_open) result["input_chunk_bytes"] = MaxBinaryChunk(ctx.config());
  return result;
}

json::value ExecInput(ExecState& state, const json::object& params, RequestContext& ctx) {
  Params p(params, {"handle", "data", "eof", "wait_ms"});
  auto id = static_cast<uint64_t>(p.RequiredInt("handle", 1, INT64_MAX));
  std::string data;
  if (auto text = p.OptionalString("data"); text && !Base64Decode(*text, data)) {
    Params::Fail("data", "base64 (RFC 4648, padded)");
  }
  bool eof = p.OptionalBool("eof").value_or(false);
  int64_t wait_ms = p.OptionalInt("wait_ms", 0, kMaxWaitMs).value_or(0);
  auto handle = state.Find(id);
  if (!handle->exec->keeps_stdin_open()) {
    throw RpcError(ErrorCode::kConflict,
                   "Handle " + std::to_string(id) + " was started without keep_stdin_open",
                   {{"handle", id}});
  }
  ctx.ExtendDeadline(std::chrono::milliseconds(wait_ms) + std::chrono::seconds(2));
  auto r = handle->exec->AddInput(data, eof, Clock::now() + std::chrono::milliseconds(wait_ms));
  return json::object{{"handle", id},
                      {"accepted", r.accepted},
                      {"stdin_open", r.stdin_open},
                      {"buffered_bytes", r.buffered}};
}

json::value ExecStatus(ExecState& state, const json::object& params, RequestContext& ctx) {
  Params p(params, {"handle", "wait_ms"});
  auto id = static_cast<uint64_t>(p.RequiredInt("handle", 1, INT64_MAX));
  int64_t wait_ms = p.OptionalInt("wait_ms", 0, kMaxWaitMs).value_or(0);
  auto handle = state.Find(id);
  if (wait_ms > 0) {
    ctx.ExtendDeadline(std::chrono::milliseconds(wait_ms) + std::chrono::seconds(2));
    handle->exec->WaitForNews(Clock::now() + std::chrono::milliseconds(wait_ms));
  }
  json::object out = handle->exec->TakeStatus();
  out["handle"] = handle->id;
  out["pid"] = handle->exec->pid();
  return out;
}

json::value ExecKill(ExecState& state, const json::object& params, RequestContext&) {
  Params p(params, {"handle", "signal"});
  auto id = static_cast<uint64_t>(p.RequiredInt("handle", 1, INT64_MAX));
  int signo = SignalParam(params, SIGTERM);
  auto handle = state.Find(id);
  if (handle->finished_at_ns != 0 || handle->exec->finished()) {
    throw RpcError(ErrorCode::kConflict, "Handle " + std::to_string(id) + " has already exited",
                   {{"handle", id}});
  }
  handle->exec->Kill(signo);
  return json::object{{"handle", id}, {"signal", signo}, {"signal_name", SignalName(signo)}};
}

json::value ExecList(ExecState& state, const json::object& params, RequestContext&) {
  Params p(params, {});
  json::array list;
  auto now = Clock::now();
  for (const auto& h : state.List()) {
    json::array args;
    for (const auto& a : h->args) args.emplace_back(a);
    bool running = !h->exec->finished();
    json::object item{
        {"handle", h->id},
        {"pid", h->exec->pid()},
        {"command", h->command},
        {"args", std::move(args)},
        {"running", running},
        {"age_ms",
         std::chrono::duration_cast<std::chrono::milliseconds>(now - h->started).count()}};
    if (!running) {
      auto done = Clock::time_point(Clock::duration(h->finished_at_ns.load()));
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(done + h->retain - now);
      item["expires_in_ms"] = std::max<int64_t>(0, left.count());
    }
    list.push_back(std::move(item));
  }
  return json::object{{"handles", std::move(list)}};
}

}  // namespace

void RegisterProcessMethods(MethodTable& table);  // process_methods.cc

ChildSpawned RegisterExecMethods(MethodTable& table) {
  auto owned = std::make_shared<ExecState>();
  auto& state = table.Own(owned);
  table.Add("exec_command", RunMode::kWorker,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecCommand(state, params, ctx);
            });
  table.Add("exec_start", RunMode::kWorker,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecStart(state, params, ctx);
            });
  table.Add("exec_status", RunMode::kLongPoll,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecStatus(state, params, ctx);
            });
  table.Add("exec_input", RunMode::kLongPoll,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecInput(state, params, ctx);
            });
  table.Add("exec_kill", RunMode::kWorker,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecKill(state, params, ctx);
            });
  table.Add("exec_list", RunMode::kWorker,
            [&state](const json::object& params, RequestContext& ctx) {
              return ExecList(state, params, ctx);
            });
  RegisterProcessMethods(table);
  // Weak: the table destroys this state before the modules registered after it.
  return [weak = std::weak_ptr<ExecState>(owned)] {
    if (auto s = weak.lock()) s->NoteSpawn();
  };
}

}  // namespace kvm
