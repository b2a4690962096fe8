#include "agent/handlers/exec/execution.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <thread>

#include "agent/handlers/exec/output_text.h"
#include "agent/handlers/exec/proc_util.h"
#include "protocol/errors.h"
#include "protocol/params.h"

namespace kvm::exec {
namespace {

using std::chrono::milliseconds;

[[noreturn]] void ThrowErrno(const std::string& what, int err) {
  throw RpcError(ErrorCode::kIoError, what + ": " + std::strerror(err),
                 {{"errno", err}, {"detail", std::strerror(err)}});
}

// Pipe whose agent-side end is non-blocking; the child's end stays blocking.
void MakePipe(UniqueFd& read_end, UniqueFd& write_end, bool agent_reads) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) ThrowErrno("pipe", errno);
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
  int ours = agent_reads ? fds[0] : fds[1];
  ::fcntl(ours, F_SETFL, ::fcntl(ours, F_GETFL) | O_NONBLOCK);
}

// RAII for the posix_spawn attribute objects.
struct SpawnSetup {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  SpawnSetup() {
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
  }
  ~SpawnSetup() {
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
  }
};

bool IsTerminating(int signo) {
  return signo == SIGTERM || signo == SIGINT || signo == SIGHUP || signo == SIGQUIT;
}

int MillisUntil(Execution::Clock::time_point when, Execution::Clock::time_point now) {
  if (when <= now) return 0;
  auto ms = std::chrono::duration_cast<milliseconds>(when - now).count() + 1;
  return static_cast<int>(std::min<int64_t>(ms, INT32_MAX));
}

}  // namespace

std::string SignalName(int signo) {
  if (const char* abbrev = ::sigabbrev_np(signo)) return std::string("SIG") + abbrev;
  return "SIG" + std::to_string(signo);
}

std::optional<int> ParseSignal(std::string_view text) {
  int number;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc() && ptr == text.data() + text.size()) {
    if (number >= 1 && number <= SIGRTMAX) return number;
    return std::nullopt;
  }
  std::string upper;
  for (char c : text) upper += static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
  std::string_view name(upper);
  if (name.substr(0, 3) == "SIG") name.remove_prefix(3);
  for (int s = 1; s < 32; ++s) {
    const char* abbrev = ::sigabbrev_np(s);
    if (abbrev && name == abbrev) return s;
  }
  return std::nullopt;
}

int SignalParam(const boost::json::object& params, int fallback) {
  auto it = params.find("signal");
  if (it == params.end() || it->value().is_null()) return fallback;
  const auto& v = it->value();
  std::optional<int> signo;
  if (v.is_string()) {
    signo = ParseSignal(v.get_string());
  } else if (v.is_int64() && v.get_int64() >= 1 && v.get_int64() <= SIGRTMAX) {
    signo = static_cast<int>(v.get_int64());
  }
  if (!signo) Params::Fail("signal", "a signal name (\"TERM\", \"SIGKILL\") or a number 1-64");
  return *signo;
}

Execution::Execution(const ExecRequest& request) : request_(request) {
  UniqueFd out_read, out_write, err_read, err_write, in_read, in_write;
  MakePipe(out_read, out_write, true);
  MakePipe(err_read, err_write, true);
  bool stdin_pipe = request_.input || request_.keep_stdin_open;
  if (stdin_pipe) MakePipe(in_read, in_write, false);
  wake_fd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd_) ThrowErrno("eventfd", errno);

  SpawnSetup s;
  // Own process group (the tree can be signalled as one), empty signal mask and default
  // dispositions: the agent blocks SIGTERM/SIGINT/SIGHUP and ignores SIGPIPE, and children
  // would inherit both.
  posix_spawnattr_setflags(&s.attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&s.attr, 0);
  sigset_t mask;
  sigemptyset(&mask);
  posix_spawnattr_setsigmask(&s.attr, &mask);
  sigset_t defaults;
  sigfillset(&defaults);
  sigdelset(&defaults, SIGKILL);
  sigdelset(&defaults, SIGSTOP);
#ifdef __GLIBC__
  // glibc's sigfillset leaves out its internal signals (32, 33); posix_spawn would then set
  // them to SIG_IGN in the child, and ignored signals survive exec.
  for (int sig : {32, 33}) {
    constexpr size_t kBits = 8 * sizeof(defaults.__val[0]);
    defaults.__val[(sig - 1) / kBits] |= 1UL << ((sig - 1) % kBits);
  }
#endif
  posix_spawnattr_setsigdefault(&s.attr, &defaults);

  if (stdin_pipe) {
    posix_spawn_file_actions_adddup2(&s.actions, in_read.get(), 0);
  } else {
    posix_spawn_file_actions_addopen(&s.actions, 0, "/dev/null", O_RDONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&s.actions, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&s.actions, err_write.get(), 2);
  // No agent descriptor (the host channel above all) may leak into the command.
  posix_spawn_file_actions_addclosefrom_np(&s.actions, 3);
  if (!request_.cwd.empty()) posix_spawn_file_actions_addchdir_np(&s.actions, request_.cwd.c_str());

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(request_.command.c_str()));
  for (auto& a : request_.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : request_.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  start_ = Clock::now();
  int rc = ::posix_spawn(&pid_, request_.resolved.real_path.c_str(), &s.actions, &s.attr,
                         argv.data(), envp.data());
  if (rc != 0) {
    pid_ = -1;
    throw RpcError(ErrorCode::kIoError,
                   "Cannot start " + request_.command + ": " + std::strerror(rc),
                   {{"errno", rc}, {"detail", std::strerror(rc)}, {"command", request_.command}});
  }
  deadline_ = start_ + request_.timeout;
  out_.fd = std::move(out_read);
  err_.fd = std::move(err_read);
  input_fd_ = std::move(in_write);
  if (request_.input) {
    input_ = std::move(*request_.input);
    request_.input.reset();
  }
  input_eof_ = !request_.keep_stdin_open;
  if (!stdin_pipe) {
    input_closed_ = true;
  } else if (input_eof_ && input_.empty()) {
    CloseInput();  // immediate EOF
  }
  // Waiting through a pidfd: poll()able together with the pipes, and immune to pid reuse.
  pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  if (!pidfd_) {
    int err = errno;
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    ThrowErrno("pidfd_open", err);
  }
}

Execution::~Execution() {
  if (pid_ < 0 || finished_) return;
  KillTree(SIGKILL);
  out_.fd.reset();
  err_.fd.reset();
  input_fd_.reset();
  for (int i = 0; i < 100 && !Pump(milliseconds(50)); ++i) {
  }
}

bool Execution::finished() const {
  std::lock_guard lock(mutex_);
  return finished_;
}

void Execution::Wake() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
}

void Execution::Kill(int signo) {
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    pending_signals_.push_back(signo);
  }
  Wake();
}

void Execution::KillTree(int signo) {
  for (pid_t p : SignalTree(pid_, signo, &tree_)) {
    if (p != pid_) signalled_.insert(p);
  }
}

bool Execution::Readable(const Stream& s) const {
  if (!request_.streaming) return true;  // the cap closes the pipe instead
  return exited_ || s.buffer.size() < request_.max_output_bytes;
}

bool Execution::Pump(milliseconds max_wait) {
  if (finished_) return true;
  auto now = Clock::now();
  std::vector<int> signals;
  {
    std::lock_guard lock(mutex_);
    signals.swap(pending_signals_);
  }
  for (int signo : signals) {
    if (exited_) break;  // a zombie leader: leftovers are killed at Finish anyway
    KillTree(signo);
    if (IsTerminating(signo) && !kill_at_) kill_at_ = now + kKillGrace;
  }
  if (!exited_ && !timed_out_ && now >= deadline_) {
    {
      std::lock_guard lock(mutex_);
      timed_out_ = true;
    }
    KillTree(SIGTERM);
    kill_at_ = now + kKillGrace;
  }
  if (kill_at_ && now >= *kill_at_) {
    KillTree(SIGKILL);
    kill_at_.reset();
    if (!force_close_at_) force_close_at_ = now + kKillGrace;
  }
  if (exited_ && exit_deadline_ && now >= *exit_deadline_) {
    // Something the command left behind still holds its stdout/stderr.
    KillTree(SIGKILL);
    exit_deadline_.reset();
    if (!force_close_at_) force_close_at_ = now + kKillGrace;
  }
  if (exited_ && force_close_at_ && now >= *force_close_at_) {
    // An escaped process (setsid) still holds the pipes; stop listening to it.
    std::lock_guard lock(mutex_);
    out_.fd.reset();
    err_.fd.reset();
  }
  if (exited_ && !out_.fd && !err_.fd) {
    Finish();
    return true;
  }

  pollfd fds[5];
  int n = 0;
  int pid_i = -1, out_i = -1, err_i = -1, in_i = -1;
  fds[n] = {wake_fd_.get(), POLLIN, 0};
  int wake_i = n++;
  if (!exited_) {
    fds[n] = {pidfd_.get(), POLLIN, 0};
    pid_i = n++;
  }
  {
    std::lock_guard lock(mutex_);
    if (out_.fd && Readable(out_)) {
      fds[n] = {out_.fd.get(), POLLIN, 0};
      out_i = n++;
    }
    if (err_.fd && Readable(err_)) {
      fds[n] = {err_.fd.get(), POLLIN, 0};
      err_i = n++;
    }
  }
  if (input_fd_) {
    short events = 0;  // POLLERR still tells when the command closes its stdin
    {
      std::lock_guard lock(mutex_);
      if (input_done_ < input_.size()) {
        events = POLLOUT;
      } else if (input_eof_) {
        CloseInput();
      }
    }
    if (input_fd_) {
      fds[n] = {input_fd_.get(), events, 0};
      in_i = n++;
    }
  }
  auto wait_until = now + max_wait;
  if (!exited_ && !timed_out_) wait_until = std::min(wait_until, deadline_);
  for (const auto& t : {kill_at_, exit_deadline_, force_close_at_}) {
    if (t) wait_until = std::min(wait_until, *t);
  }
  int ready = ::poll(fds, static_cast<nfds_t>(n), MillisUntil(wait_until, now));
  if (ready <= 0) return false;
  now = Clock::now();
  if (fds[wake_i].revents) {
    uint64_t value;
    [[maybe_unused]] ssize_t r = ::read(wake_fd_.get(), &value, sizeof value);
  }
  if (out_i >= 0 && fds[out_i].revents) ReadStream(out_, now);
  if (err_i >= 0 && fds[err_i].revents) ReadStream(err_, now);
  if (in_i >= 0 && fds[in_i].revents) WriteInput(fds[in_i].revents);
  if (pid_i >= 0 && fds[pid_i].revents) OnPidfdReadable();
  if (exited_ && !out_.fd && !err_.fd) {
    Finish();
    return true;
  }
  return false;
}

void Execution::ReadStream(Stream& s, Clock::time_point) {
  char buf[65536];
  size_t cap = request_.max_output_bytes;
  size_t want = sizeof buf;
  if (!request_.streaming) want = std::min(want, cap - s.buffer.size() + 1);
  ssize_t n = ::read(s.fd.get(), buf, want);
  std::lock_guard lock(mutex_);
  if (n > 0) {
    size_t got = static_cast<size_t>(n);
    s.total += got;
    if (!request_.streaming) {
      size_t room = cap - s.buffer.size();
      s.buffer.append(buf, std::min(got, room));
      if (got > room) {
        // Cut off like `| head -c`: the writer gets EPIPE/SIGPIPE on its next write.
        s.truncated = true;
        s.fd.reset();
      }
    } else if (exited_ && s.buffer.size() >= cap + kAfterExitSlack) {
      s.dropped += got;  // reported to the client, never silent
    } else {
      s.buffer.append(buf, got);
    }
  } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
    s.fd.reset();
  }
  news_.notify_all();
}

void Execution::WriteInput(short revents) {
  std::lock_guard lock(mutex_);
  if (input_done_ == input_.size()) {
    if (revents & (POLLERR | POLLHUP)) CloseInput();  // the command closed its stdin
    return;
  }
  ssize_t n = ::write(input_fd_.get(), input_.data() + input_done_, input_.size() - input_done_);
  if (n > 0) {
    input_done_ += static_cast<size_t>(n);
    if (input_done_ == input_.size()) {
      input_.clear();
      input_done_ = 0;
    }
    news_.notify_all();  // room for exec_input
  } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
    // EPIPE: the command closed its stdin without reading it all; that is its choice.
    CloseInput();
    return;
  }
  if (input_eof_ && input_.empty()) CloseInput();
}

void Execution::CloseInput() {
  input_fd_.reset();
  input_closed_ = true;
  input_.clear();
  input_done_ = 0;
  news_.notify_all();
}

Execution::InputResult Execution::AddInput(std::string_view data, bool eof,
                                           Clock::time_point until) {
  InputResult r;
  std::unique_lock lock(mutex_);
  news_.wait_until(lock, until, [&] {
    return input_closed_ || input_eof_ || input_.size() - input_done_ < kInputBufferBytes;
  });
  if (!input_closed_ && !input_eof_ && input_.size() - input_done_ < kInputBufferBytes) {
    if (input_done_ > 0 && input_done_ >= input_.size() / 2) {
      input_.erase(0, input_done_);  // keeps the copy at most the size of what is queued
      input_done_ = 0;
    }
    input_.append(data);
    input_eof_ = eof;
    r.accepted = true;
  }
  r.stdin_open = !input_closed_ && !input_eof_;
  r.buffered = input_.size() - input_done_;
  lock.unlock();
  if (r.accepted) Wake();
  return r;
}

void Execution::OnPidfdReadable() {
  siginfo_t info{};
  // WNOWAIT: the leader stays a zombie, so its pid (= the process group id) cannot be reused
  // while leftovers of the group are still being signalled.
  if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info,
               WEXITED | WNOHANG | WNOWAIT) != 0) {
    // ECHILD: something else reaped it, and the pidfd stays readable for ever. Ended, with
    // its status lost (exit_code and signal null), rather than polled in a busy loop.
    if (errno != ECHILD) return;
    info.si_code = 0;
  } else if (info.si_pid == 0) {
    return;
  }
  auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    exited_ = true;
    if (info.si_code == CLD_EXITED) {
      exit_code_ = info.si_status;
    } else if (info.si_code != 0) {
      signal_ = info.si_status;
    }
    duration_ms_ = std::chrono::duration_cast<milliseconds>(now - start_).count();
    CloseInput();
  }
  if (out_.fd || err_.fd) exit_deadline_ = now + kExitGrace;
  news_.notify_all();
}

void Execution::Finish() {
  // Whatever is left of the group goes with the leader; the leader is still a zombie here, so
  // the group id cannot have been reused. So do members of a tree signalled before (a
  // setsid'd one that ignored a timeout's SIGTERM may not hold the pipes that delay this).
  ::kill(-pid_, SIGKILL);
  if (!tree_.empty()) KillTree(SIGKILL);
  siginfo_t info{};
  ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info, WEXITED);
  // The agent is a child subreaper: killed members whose parent died are now our children.
  auto until = Clock::now() + std::chrono::seconds(2);
  for (;;) {
    bool pending = false;
    for (;;) {
      pid_t r = ::waitpid(-pid_, nullptr, WNOHANG);
      if (r > 0) continue;
      if (r == 0) pending = true;
      break;
    }
    for (auto it = signalled_.begin(); it != signalled_.end();) {
      pid_t r = ::waitpid(*it, nullptr, WNOHANG);
      if (r == 0) {
        pending = true;
        ++it;
      } else {
        it = signalled_.erase(it);
      }
    }
    if (!pending || Clock::now() >= until) break;
    std::this_thread::sleep_for(milliseconds(2));
  }
  pidfd_.reset();
  std::lock_guard lock(mutex_);
  finished_ = true;
  news_.notify_all();
}

void Execution::PutStatus(boost::json::object& out) const {
  if (exit_code_) {
    out["exit_code"] = *exit_code_;
  } else {
    out["exit_code"] = nullptr;
  }
  if (signal_) {
    out["signal"] = *signal_;
    out["signal_name"] = SignalName(*signal_);
  } else {
    out["signal"] = nullptr;
  }
  out["timed_out"] = timed_out_;
}

boost::json::object Execution::FinalResult() {
  std::lock_guard lock(mutex_);
  boost::json::object out;
  PutStatus(out);
  PutOutput(out, "stdout", out_.buffer);
  PutOutput(out, "stderr", err_.buffer);
  out["stdout_truncated"] = out_.truncated;
  out["stderr_truncated"] = err_.truncated;
  out["duration_ms"] = duration_ms_;
  return out;
}

namespace {
// Bytes of a stream's buffer that can be handed out now (a split UTF-8 character waits for
// its remaining bytes unless the stream has ended).
size_t Deliverable(const std::string& buffer, bool ended) {
  return ended ? buffer.size() : buffer.size() - IncompleteUtf8Tail(buffer);
}
}  // namespace

boost::json::object Execution::TakeStatus() {
  boost::json::object out;
  bool resume = false;
  {
    std::lock_guard lock(mutex_);
    out["exited"] = finished_;
    out["running"] = !finished_;
    PutStatus(out);
    if (!finished_) {  // the exit status is final only once all output is collected
      out["exit_code"] = nullptr;
      out["signal"] = nullptr;
      out.erase("signal_name");
    }
    for (Stream* s : {&out_, &err_}) {
      const char* name = s == &out_ ? "stdout" : "stderr";
      size_t n = Deliverable(s->buffer, !s->fd);
      if (s->buffer.size() >= request_.max_output_bytes) resume = true;
      PutOutput(out, name, std::string_view(s->buffer).substr(0, n));
      s->buffer.erase(0, n);
      out[std::string(name) + "_dropped_bytes"] = s->dropped;
      out[std::string(name) + "_total_bytes"] = s->total;
    }
    if (finished_) out["duration_ms"] = duration_ms_;
  }
  if (resume) Wake();  // the pump paused a full buffer
  return out;
}

void Execution::WaitForNews(Clock::time_point until) {
  std::unique_lock lock(mutex_);
  news_.wait_until(lock, until, [&] {
    return finished_ || Deliverable(out_.buffer, !out_.fd) > 0 ||
           Deliverable(err_.buffer, !err_.fd) > 0;
  });
}

}  // namespace kvm::exec
