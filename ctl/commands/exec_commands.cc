// exec (run a command in the guest, streaming its output), ps and kill.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ctl/ctl.h"
#include "ctl/interrupt.h"
#include "ctl/json_print.h"
#include "ctl/terminal_text.h"
#include "protocol/base64.h"

namespace kvm::ctl {
namespace json = boost::json;
namespace {

// Writes all of `bytes`; false (errno set) when the local stream does not take them.
bool WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;  // a noted Ctrl-C: the caller looks at it
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Writes one stream's chunk of an exec_status result, decoding base64 when it says so.
// False (errno set) when the local stream refused it.
bool Emit(const json::object& status, const char* stream, int fd) {
  auto* value = status.if_contains(stream);
  if (!value || !value->is_string() || value->get_string().empty()) return true;
  std::string encoding_key = std::string(stream) + "_encoding";
  auto* encoding = status.if_contains(encoding_key);
  if (encoding && encoding->is_string() && encoding->get_string() == "base64") {
    std::string bytes;
    if (!Base64Decode(value->get_string(), bytes)) return true;
    return WriteAll(fd, bytes);
  }
  return WriteAll(fd, value->get_string());
}

// SIGPIPE ignored while it lives: a reader that goes away (`exec -- yes | head -1`) must show
// up as EPIPE, so that ctl stops the guest command instead of dying and leaving it running.
class IgnoreSigpipe {
 public:
  IgnoreSigpipe() {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    ::sigaction(SIGPIPE, &ignore, &previous_);
  }
  ~IgnoreSigpipe() { ::sigaction(SIGPIPE, &previous_, nullptr); }
  IgnoreSigpipe(const IgnoreSigpipe&) = delete;
  IgnoreSigpipe& operator=(const IgnoreSigpipe&) = delete;

 private:
  struct sigaction previous_ {};
};

// The agent's answer when max_concurrent_requests requests already run: nothing was done, and
// a moment later there is room.
constexpr int64_t kBusy = -32004;

bool IsBusy(const CallResult& r) { return !r.ok && r.error_code == kBusy; }

// Pauses between retries of a request answered busy: 20 ms, doubling up to 320 ms. A signal
// ends a pause early (no SA_RESTART), so Ctrl-C is looked at at once.
class BusyBackoff {
 public:
  void Wait() {
    ::poll(nullptr, 0, pause_ms_);
    pause_ms_ = std::min(pause_ms_ * 2, 320);
  }
  void Reset() { pause_ms_ = 20; }

 private:
  int pause_ms_ = 20;
};

// exec_kill, retried while busy for at most ~2 s. Quiet: the command may just have ended.
void KillCommand(AgentClient& client, int64_t handle) {
  BusyBackoff backoff;
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    CallResult r = client.Call("exec_kill", {{"handle", handle}, {"signal", "TERM"}});
    if (!IsBusy(r) || std::chrono::steady_clock::now() >= give_up) return;
    backoff.Wait();
  }
}

// Calls `method` so that a signal (Ctrl-C) does not wait out --timeout for an agent that does
// not answer: once a signal is noted, the answer is waited for at most `after_signal`. The
// answer still counts when it arrives in time (no output is lost); a ClientError when not.
CallResult CallInterruptibly(AgentClient& client, std::string_view method,
                             const json::object& params, std::chrono::milliseconds after_signal) {
  if (PendingInterrupt() == 0) {
    StopOnInterruptScope stop(client, true);
    try {
      return client.Call(method, params);
    } catch (const Interrupted&) {
      // Sent or not: decided below, without stopping on the signal again.
    }
  }
  client.set_timeout(std::min(client.timeout(), after_signal));
  return client.awaiting_reply() ? client.AwaitReply() : client.Call(method, params);
}

int64_t IntOr(const json::object& o, const char* key, int64_t fallback) {
  auto* v = o.if_contains(key);
  return v && v->is_int64() ? v->get_int64() : fallback;
}

// exec -i: local stdin to the command's stdin, one exec_input at a time, never waiting on
// stdin while the command's output waits to be shown (an interactive stdin may stay silent).
class StdinFeeder {
 public:
  StdinFeeder(AgentClient& client, int64_t handle, size_t chunk,
              std::chrono::milliseconds after_signal)
      : client_(client), handle_(handle), buf_(chunk, '\0'), after_signal_(after_signal) {}

  bool active() const { return !done_; }
  // Local stdin could not be read (a directory, an I/O error): the command saw its input cut.
  bool read_failed() const { return read_failed_; }
  bool has_pending() const { return !pending_.empty() || local_eof_; }
  void Stop() { done_ = true; }

  // Reads what stdin holds now, without waiting, unless a chunk is already pending.
  void Fill() {
    if (done_ || has_pending()) return;
    pollfd p{0, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return;
    ssize_t n = ::read(0, buf_.data(), buf_.size());
    if (n > 0) {
      pending_.assign(buf_.data(), static_cast<size_t>(n));
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
      if (n < 0 && errno != EBADF) {  // EBADF: stdin closed, i.e. no input
        std::fprintf(stderr, "kvmmanager-ctl: reading stdin: %s\n", std::strerror(errno));
        read_failed_ = true;
      }
      local_eof_ = true;
    }
  }

  // Sends the pending chunk (or the end of input), waiting up to `wait_ms` for room in the
  // agent's buffer. Not accepted (the command is not reading): it stays pending for later.
  void Send(int64_t wait_ms) {
    if (done_ || !has_pending()) return;
    json::object params{{"handle", handle_}, {"wait_ms", wait_ms}};
    if (!pending_.empty()) params["data"] = Base64Encode(pending_);
    if (pending_.empty()) params["eof"] = true;
    CallResult r = CallInterruptibly(client_, "exec_input", params, after_signal_);
    if (IsBusy(r)) return;  // stays pending: sent again on the next round
    if (!r.ok) {            // exec_status will tell the rest
      PrintRpcError(r);
      done_ = true;
      return;
    }
    const json::object& o = r.result.as_object();
    bool accepted = o.at("accepted").as_bool();
    if (accepted) {
      if (pending_.empty()) done_ = true;  // that was the end of input
      pending_.clear();
    }
    // Closed: the command closed its stdin or exited; the rest of ours is not wanted, as
    // for the writer of a shell pipeline whose reader went away.
    if (!o.at("stdin_open").as_bool()) done_ = true;
  }

 private:
  AgentClient& client_;
  int64_t handle_;
  std::string buf_;
  std::string pending_;
  std::chrono::milliseconds after_signal_;
  bool local_eof_ = false;
  bool done_ = false;
  bool read_failed_ = false;
};

struct ExecArgs {
  std::vector<std::string> command;
  std::vector<std::string> env;
  std::string cwd;
  int64_t timeout = 0;
  bool send_stdin = false;
};

void CollectOutput(Options& options, AgentClient& client, int64_t handle, StdinFeeder& feeder,
                   int64_t wait_ms, std::chrono::milliseconds after_signal);

void RunExec(Options& options, const ExecArgs& args) {
  json::object params{{"command", args.command[0]}};
  json::array argv;
  for (size_t i = 1; i < args.command.size(); ++i) argv.emplace_back(args.command[i]);
  params["args"] = std::move(argv);
  if (!args.env.empty()) {
    json::object env;
    for (const auto& kv : args.env) {
      size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "kvmmanager-ctl: --env wants KEY=VALUE, got \"%s\"\n", kv.c_str());
        options.exit_code = kExitUsage;
        return;
      }
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    params["env"] = std::move(env);
  }
  if (!args.cwd.empty()) params["cwd"] = args.cwd;
  if (args.timeout > 0) params["timeout_seconds"] = args.timeout;
  if (args.send_stdin) params["keep_stdin_open"] = true;

  // Ctrl-C (or SIGTERM, SIGHUP) asks the guest command to stop instead of orphaning it; noted
  // from before the start, so a signal as the command starts still reaches it.
  InterruptScope interrupts;
  IgnoreSigpipe sigpipe;
  auto client = Connect(options);
  // Busy: nothing was started; tried again for as long as ctl waits for an answer (--timeout).
  auto give_up = std::chrono::steady_clock::now() +
                 std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
  BusyBackoff backoff;
  CallResult started;
  try {
    // An agent that does not answer must not hold Ctrl-C off until --timeout.
    StopOnInterruptScope stop(*client, true);
    for (;;) {
      started = client->Call("exec_start", params);
      if (!IsBusy(started) || std::chrono::steady_clock::now() >= give_up) break;
      ThrowIfInterrupted();
      backoff.Wait();
    }
  } catch (const Interrupted& e) {
    // exec_start went out, so the command may start: wait a moment for its answer. If it
    // comes, the command is stopped below like on any Ctrl-C and ctl reports how it ended.
    auto timeout = client->timeout();
    client->set_timeout(std::chrono::seconds(1));
    bool answered = false;
    if (client->awaiting_reply()) {
      try {
        started = client->AwaitReply();
        answered = true;
      } catch (const ClientError&) {
        // No answer in time either: the agent does not answer; nothing more ctl can do.
      }
    }
    client->set_timeout(timeout);
    if (!answered) {
      std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
      options.exit_code = 128 + e.signal;
      return;
    }
    if (IsBusy(started)) {  // nothing started
      options.exit_code = 128 + e.signal;
      return;
    }
  }
  if (!started.ok) {
    PrintRpcError(started);
    options.exit_code = kExitRpcError;
    return;
  }
  int64_t handle = started.result.at("handle").as_int64();
  int64_t wait_ms = std::min<int64_t>(1000, static_cast<int64_t>(options.timeout_seconds * 500));
  // After a signal, an answer is waited for this long at most: a poll's wait plus slack.
  auto after_signal = std::chrono::milliseconds(wait_ms + 2000);
  StdinFeeder feeder(
      *client, handle,
      static_cast<size_t>(IntOr(started.result.as_object(), "input_chunk_bytes", 32768)),
      after_signal);
  if (!args.send_stdin) feeder.Stop();
  try {
    CollectOutput(options, *client, handle, feeder, wait_ms, after_signal);
  } catch (const ClientError& e) {
    int signal = PendingInterrupt();
    if (signal == 0) throw;
    // Interrupted, and the agent no longer answers in time: stop waiting for it.
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    options.exit_code = 128 + signal;
  }
}

// The exec_status loop of RunExec: shows the output until the command has ended and sets the
// exit code from how it ended.
void CollectOutput(Options& options, AgentClient& client, int64_t handle, StdinFeeder& feeder,
                   int64_t wait_ms, std::chrono::milliseconds after_signal) {
  // Polls while stdin may bring input are short: they bound how long typed input waits.
  int64_t input_wait_ms = std::min<int64_t>(100, wait_ms);
  BusyBackoff backoff;
  bool kill_sent = false;
  for (;;) {
    if (PendingInterrupt() != 0 && !kill_sent) {
      client.set_timeout(std::min(client.timeout(), after_signal));
      CallResult killed = client.Call("exec_kill", {{"handle", handle}, {"signal", "TERM"}});
      if (!IsBusy(killed)) {  // busy: tried again on the next round
        if (!killed.ok) PrintRpcError(killed);
        kill_sent = true;
        feeder.Stop();
      }
    }
    int64_t status_wait = wait_ms;
    if (feeder.active()) {
      feeder.Fill();
      // A full buffer in the agent: its wait lets the command read; the output collected
      // below may be what the command waits for before it reads on.
      feeder.Send(input_wait_ms);
      feeder.Fill();
      // Input ready to go: collect output without waiting. None: wait a little for output,
      // then look at stdin again.
      if (feeder.active()) status_wait = feeder.has_pending() ? 0 : input_wait_ms;
    }
    CallResult status = CallInterruptibly(
        client, "exec_status", {{"handle", handle}, {"wait_ms", status_wait}}, after_signal);
    if (IsBusy(status)) {
      // The command runs on in the guest and its output waits there: never abandon it for a
      // busy agent. The agent keeps the handle at least as long as the command may run.
      backoff.Wait();
      continue;
    }
    backoff.Reset();
    if (!status.ok) {
      PrintRpcError(status);
      options.exit_code = kExitRpcError;
      return;
    }
    const json::object& s = status.result.as_object();
    if (!Emit(s, "stdout", 1) || !Emit(s, "stderr", 2)) {
      // Nobody takes the output any more: stop the command, as a pipeline's writer gets
      // SIGPIPE, instead of draining it until its timeout.
      int err = errno;
      if (!kill_sent) KillCommand(client, handle);
      if (err == EPIPE) {
        options.exit_code = 128 + SIGPIPE;  // quietly, like a shell pipeline's writer
      } else {
        std::fprintf(stderr, "kvmmanager-ctl: writing the command's output: %s\n",
                     std::strerror(err));
        options.exit_code = kExitUsage;  // a local file problem
      }
      return;
    }
    if (!s.at("exited").as_bool()) continue;
    for (const char* stream : {"stdout", "stderr"}) {
      int64_t dropped = IntOr(s, (std::string(stream) + "_dropped_bytes").c_str(), 0);
      if (dropped > 0) {
        std::fprintf(stderr, "kvmmanager-ctl: %lld bytes of %s were dropped by the agent\n",
                     static_cast<long long>(dropped), stream);
      }
    }
    if (auto* t = s.if_contains("timed_out"); t && t->is_bool() && t->get_bool()) {
      std::fprintf(stderr, "kvmmanager-ctl: the command timed out in the guest\n");
    }
    int64_t signal = IntOr(s, "signal", 0);
    options.exit_code =
        signal > 0 ? static_cast<int>(128 + signal) : static_cast<int>(IntOr(s, "exit_code", 1));
    if (feeder.read_failed()) options.exit_code = kExitUsage;  // said above, a local problem
    return;
  }
}

std::string FormatCpu(int64_t ms) {
  char buf[32];
  int64_t s = ms / 1000;
  std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                static_cast<long long>(s % 60));
  return buf;
}

void PrintProcesses(const json::value& result) {
  std::printf("%7s %7s %-10s %s %9s %8s  %s\n", "PID", "PPID", "USER", "S", "RSS_KB", "TIME",
              "COMMAND");
  for (const auto& item : result.at("processes").as_array()) {
    const auto& p = item.as_object();
    std::string cmd;
    for (const auto& a : p.at("cmdline").as_array()) {
      if (!cmd.empty()) cmd += ' ';
      cmd += a.as_string();
    }
    if (cmd.empty()) cmd = "[" + std::string(p.at("name").as_string()) + "]";
    // Any guest user chooses its processes' argv: no escape sequences reach the terminal.
    cmd = ForTerminal(cmd);
    std::string user = p.at("user").is_string() ? ForTerminal(p.at("user").as_string()) : "?";
    std::printf("%7lld %7lld %-10s %s %9lld %8s  %s\n",
                static_cast<long long>(p.at("pid").as_int64()),
                static_cast<long long>(p.at("ppid").as_int64()), user.c_str(),
                std::string(p.at("state").as_string()).c_str(),
                static_cast<long long>(p.at("rss_bytes").as_int64() / 1024),
                FormatCpu(p.at("cpu_time_ms").to_number<int64_t>()).c_str(), cmd.c_str());
  }
}

}  // namespace

void AddExecCommands(CLI::App& app, Options& options) {
  auto args = std::make_shared<ExecArgs>();
  auto* exec = app.add_subcommand(
      "exec",
      "run a command in the guest (no shell) and stream its output; exits with the command's "
      "exit code (128+N if a signal N killed it). Use -- before the command");
  exec->add_option("command", args->command, "program (name or path) and its arguments")
      ->required();
  exec->add_option("-e,--env", args->env,
                   "KEY=VALUE added to the command's environment (repeatable)")
      ->allow_extra_args(false);
  exec->add_option("-C,--cwd", args->cwd, "working directory in the guest (absolute)");
  exec->add_option("--command-timeout", args->timeout,
                   "seconds before the guest kills the command: 1 to 604800 (the agent refuses "
                   "more), silently capped at the agent's max_command_timeout_seconds, which is "
                   "also the default")
      ->check(CLI::Range(1, 604800));
  exec->add_flag("-i,--stdin", args->send_stdin,
                 "stream local stdin to the command as it arrives (any size; without -i the "
                 "command's stdin is /dev/null)");
  exec->callback([&options, args] { RunExec(options, *args); });

  auto* ps = app.add_subcommand("ps", "list the guest's processes");
  ps->callback([&options] { CallAndShow(options, "process_list", {}, PrintProcesses); });

  auto* kill = app.add_subcommand("kill", "send a signal to a guest process (see docs/exec.md)");
  auto pid = std::make_shared<int64_t>(0);
  auto signal = std::make_shared<std::string>("TERM");
  kill->add_option("pid", *pid, "process id in the guest")->required();
  kill->add_option("-s,--signal", *signal, "signal name or number")->capture_default_str();
  kill->callback([&options, pid, signal] {
    json::object params{{"pid", *pid}};
    int64_t number = 0;
    auto [end, ec] = std::from_chars(signal->data(), signal->data() + signal->size(), number);
    if (ec == std::errc() && end == signal->data() + signal->size()) {
      params["signal"] = number;
    } else {
      params["signal"] = *signal;
    }
    CallAndShow(options, "process_kill", params, [&](const json::value& r) {
      std::printf("sent %s to %lld (%s)\n", std::string(r.at("signal_name").as_string()).c_str(),
                  static_cast<long long>(*pid), std::string(r.at("name").as_string()).c_str());
    });
  });
}

}  // namespace kvm::ctl
