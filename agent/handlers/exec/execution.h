// One running command: spawn without a shell, feed stdin, capture both pipes with a cap,
// enforce the timeout by killing the whole process tree, and reap everything it leaves.
#pragma once

#include <sys/types.h>

#include <boost/json/object.hpp>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/core/unique_fd.h"
#include "agent/handlers/exec/command_policy.h"

namespace kvm::exec {

// How long a tree gets between SIGTERM and SIGKILL on timeout or exec_kill.
inline constexpr auto kKillGrace = std::chrono::seconds(1);
// After the main process exits, how long its leftovers may keep the pipes open before the
// rest of its process group is killed.
inline constexpr auto kExitGrace = std::chrono::milliseconds(200);
// exec_start: after the command exited, how far past max_output_bytes a stream's buffer may
// grow to take in what is left in the pipe (a pipe holds at most 1 MiB by default).
inline constexpr size_t kAfterExitSlack = 1 << 20;
// exec_input: input waiting for the command to read it is accepted while less than this is
// queued (so at most this plus one message per handle).
inline constexpr size_t kInputBufferBytes = 1 << 20;

struct ExecRequest {
  std::string command;  // as the request gave it (argv[0])
  ResolvedCommand resolved;
  std::vector<std::string> args;
  std::vector<std::string> env;  // complete environment, "KEY=value"
  std::string cwd;
  std::optional<std::string> input;  // stdin bytes; nullopt: /dev/null (unless kept open)
  // exec_start: stdin stays a pipe after `input`, fed by exec_input until it sends eof.
  bool keep_stdin_open = false;
  std::chrono::milliseconds timeout{30000};
  size_t max_output_bytes = 1 << 20;  // per stream
  // false (exec_command): output past the cap is cut off by closing the pipe.
  // true (exec_start): the cap bounds the unread buffer; a full buffer pauses reading, so the
  // command blocks on write until the client collects its output.
  bool streaming = false;
};

class Execution {
 public:
  using Clock = std::chrono::steady_clock;

  // Spawns the command; throws RpcError (io_error with errno) if it cannot start.
  explicit Execution(const ExecRequest& request);
  // Kills whatever is still running and reaps it.
  ~Execution();
  Execution(const Execution&) = delete;
  Execution& operator=(const Execution&) = delete;

  pid_t pid() const { return pid_; }
  bool keeps_stdin_open() const { return request_.keep_stdin_open; }

  // Does I/O for at most `max_wait`. Returns true once the command has exited, its pipes are
  // drained and everything is reaped. One thread pumps; others may call the methods below.
  bool Pump(std::chrono::milliseconds max_wait);

  // Signals the command's whole tree. SIGTERM/SIGINT/SIGHUP/SIGQUIT are followed by SIGKILL
  // after kKillGrace if the tree is still alive.
  void Kill(int signo);

  // Output gathered so far, moved out (streaming) plus status, as exec_status reports it.
  // `final_only`: the complete result for exec_command.
  boost::json::object TakeStatus();
  boost::json::object FinalResult();

  bool finished() const;

  // exec_input: queues `data` for the command's stdin (all or nothing), waiting until `until`
  // for room; `eof` closes stdin once everything queued is written.
  struct InputResult {
    bool accepted = false;
    bool stdin_open = false;  // false: closed (eof sent, the command closed it, or it exited)
    size_t buffered = 0;      // bytes queued, not yet read by the command
  };
  InputResult AddInput(std::string_view data, bool eof, Clock::time_point until);
  // Blocks until there is output to take, the command finished, or `until`.
  void WaitForNews(Clock::time_point until);

 private:
  struct Stream {
    UniqueFd fd;
    std::string buffer;
    uint64_t total = 0;      // bytes read from the pipe
    uint64_t dropped = 0;    // streaming: bytes discarded after exit (buffer past 2x cap)
    bool truncated = false;  // exec_command: cut off at the cap
  };

  void OnPidfdReadable();
  void ReadStream(Stream& s, Clock::time_point now);
  void WriteInput(short revents);
  void CloseInput();  // under mutex_
  void KillTree(int signo);
  void Finish();
  void Wake();
  bool Readable(const Stream& s) const;            // under mutex_
  void PutStatus(boost::json::object& out) const;  // under mutex_

  ExecRequest request_;
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  UniqueFd input_fd_;  // the pump's; closed under mutex_
  UniqueFd wake_fd_;
  Clock::time_point start_;
  Clock::time_point deadline_;
  std::optional<Clock::time_point> kill_at_;         // SIGKILL the tree then
  std::optional<Clock::time_point> exit_deadline_;   // leftovers holding pipes get killed then
  std::optional<Clock::time_point> force_close_at_;  // then the pipes are closed regardless
  std::set<pid_t> signalled_;                        // tree members to reap if reparented to us
  std::map<pid_t, uint64_t> tree_;    // members seen by KillTree (pid -> start time), kept for
                                      // the next signal: a setsid'd one loses its parent link
  std::vector<int> pending_signals_;  // from Kill(), under mutex_

  mutable std::mutex mutex_;
  std::condition_variable news_;
  Stream out_, err_;
  std::string input_;  // queued for stdin; input_[0, input_done_) already written
  size_t input_done_ = 0;
  bool input_eof_ = false;     // close stdin once input_ is written
  bool input_closed_ = false;  // stdin is closed; nothing more is accepted
  bool exited_ = false;        // main process exited (status known)
  bool finished_ = false;      // exited, drained and reaped
  bool timed_out_ = false;
  std::optional<int> exit_code_;
  std::optional<int> signal_;
  int64_t duration_ms_ = 0;
};

// "SIGTERM" for 15, or "SIG<n>" for unnamed numbers.
std::string SignalName(int signo);
// Accepts a number or a name ("TERM", "SIGTERM", "kill"); nullopt if unknown.
std::optional<int> ParseSignal(std::string_view text);
// The optional "signal" param (name or number); throws invalid_params when malformed.
int SignalParam(const boost::json::object& params, int fallback);

}  // namespace kvm::exec
