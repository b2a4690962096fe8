#include "vm_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json/src.hpp>  // Boost.JSON compiled into this binary; the suite links no project code
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace vmtest {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

namespace {

int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

// Child side of a spawn: own session (so the whole group can be killed), dies with the test binary.
[[noreturn]] void ExecChild(const std::vector<std::string>& argv, int in_fd, int out_fd) {
  setsid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  dup2(in_fd, 0);
  dup2(out_fd, 1);
  dup2(out_fd, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execvp(args[0], args.data());
  dprintf(2, "exec %s: %s\n", args[0], strerror(errno));
  _exit(127);
}

int DecodeStatus(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& s, int lines) {
  size_t pos = s.size();
  while (lines-- > 0 && pos > 0) {
    pos = s.rfind('\n', pos - 1);
    if (pos == std::string::npos) return s;
  }
  return s.substr(pos);
}

}  // namespace

CommandResult RunCommand(const std::vector<std::string>& argv, Clock::duration timeout) {
  CommandResult r;
  int out[2];
  int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nullfd < 0) return r;
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(nullfd);
    return r;
  }
  pid_t pid = fork();
  if (pid == 0) ExecChild(argv, nullfd, out[1]);
  close(out[1]);
  close(nullfd);
  if (pid < 0) {
    close(out[0]);
    return r;
  }
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p{out[0], POLLIN, 0};
    int pr = poll(&p, 1, MsLeft(deadline));
    if (pr == 0) {
      r.timed_out = true;
      break;
    }
    if (pr < 0 && errno == EINTR) continue;
    char tmp[8192];
    ssize_t n = read(out[0], tmp, sizeof tmp);
    if (n <= 0) break;
    r.output.append(tmp, n);
  }
  close(out[0]);
  if (r.timed_out) kill(-pid, SIGKILL);
  int st = 0;
  // The output pipe closed; give the process a moment to exit, then make sure it is gone.
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      r.status = DecodeStatus(st);
      return r;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  kill(-pid, SIGKILL);
  waitpid(pid, &st, 0);
  r.timed_out = true;
  r.status = DecodeStatus(st);
  return r;
}

// ---- Channel ----

long long Channel::NextId() {
  // Fresh across reconnects and runs, so a stale reply can never be mistaken for a new one.
  static std::atomic<long long> next{(static_cast<long long>(time(nullptr)) % 100000) * 100000};
  return ++next;
}

bool Channel::Connect(const std::string& path, Clock::duration timeout) {
  Close();
  const auto deadline = Clock::now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return false;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  for (;;) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
      fd_ = fd;
      eof_ = false;
      buf_.clear();
      return true;
    }
    close(fd);
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(20));  // QEMU not listening yet
  }
}

void Channel::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  buf_.clear();
}

bool Channel::SendRaw(std::string_view bytes) {
  const auto deadline = Clock::now() + seconds(30);
  while (!bytes.empty()) {
    if (fd_ < 0) return false;
    ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, MsLeft(deadline)) == 0) return false;
      continue;
    }
    return false;
  }
  return true;
}

bool Channel::Fill(Clock::time_point deadline) {
  for (;;) {
    if (fd_ < 0 || eof_) return false;
    pollfd p{fd_, POLLIN, 0};
    int pr = poll(&p, 1, MsLeft(deadline));
    if (pr == 0) return false;
    if (pr < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
    if (n > 0) {
      buf_.append(tmp, n);
      return true;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) eof_ = true;
  }
}

bool Channel::WaitBuffered(size_t n, Clock::time_point deadline) {
  while (buf_.size() < n && buf_.find('\n') == std::string::npos)
    if (!Fill(deadline)) return false;
  return true;
}

std::optional<std::string> Channel::ReadLine(Clock::time_point deadline) {
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    if (!Fill(deadline)) return std::nullopt;
  }
}

Channel::Reply Channel::Call(std::string_view method, const json::value& params,
                             Clock::duration timeout, bool resync) {
  Reply r;
  const long long id = NextId();
  json::object req{{"jsonrpc", "2.0"}, {"method", method}, {"id", id}};
  if (!params.is_null()) req["params"] = params;
  std::string line = (resync ? "\n" : "") + json::serialize(req) + "\n";
  const auto t0 = Clock::now();
  if (!SendRaw(line)) {
    r.failure = "could not send the request (channel closed)";
    return r;
  }
  const auto deadline = t0 + timeout;
  for (;;) {
    auto got = ReadLine(deadline);
    if (!got) {
      r.failure = eof() ? "channel closed before the response" : "no response within the timeout";
      return r;
    }
    json::error_code ec;
    json::value v = json::parse(*got, ec);
    if (!ec && v.is_object() && v.as_object().contains("id") && v.as_object().at("id") == id) {
      r.ms = MsSince(t0);
      r.response = v.as_object();
      r.ok = true;
      return r;
    }
    r.skipped.push_back(std::move(*got));
  }
}

// ---- Qmp ----

bool Qmp::Connect(const std::string& path, Clock::duration timeout, std::string* err) {
  events_.clear();
  if (!ch_.Connect(path, timeout)) {
    *err = "cannot connect to QMP socket " + path;
    return false;
  }
  auto greeting = ch_.ReadLine(Clock::now() + seconds(10));
  if (!greeting || greeting->find("\"QMP\"") == std::string::npos) {
    *err = "no QMP greeting";
    return false;
  }
  return Execute("qmp_capabilities", {}, err).has_value();
}

bool Qmp::PumpOne(Clock::time_point deadline) {
  auto line = ch_.ReadLine(deadline);
  if (!line) return false;
  json::error_code ec;
  json::value v = json::parse(*line, ec);
  if (!ec && v.is_object() && v.as_object().contains("event")) events_.push_back(v.as_object());
  return true;
}

std::optional<json::value> Qmp::Execute(std::string_view cmd, const json::object& args,
                                        std::string* err) {
  json::object req{{"execute", cmd}};
  if (!args.empty()) req["arguments"] = args;
  if (!ch_.SendRaw(json::serialize(req) + "\n")) {
    *err = "QMP send failed";
    return std::nullopt;
  }
  const auto deadline = Clock::now() + seconds(20);
  for (;;) {
    auto line = ch_.ReadLine(deadline);
    if (!line) {
      *err = std::string("no QMP answer to ") + std::string(cmd);
      return std::nullopt;
    }
    json::error_code ec;
    json::value v = json::parse(*line, ec);
    if (ec || !v.is_object()) continue;
    auto& o = v.as_object();
    if (o.contains("event")) {
      events_.push_back(o);
    } else if (o.contains("return")) {
      return o["return"];
    } else if (o.contains("error")) {
      *err = std::string(cmd) + ": " + json::serialize(o["error"]);
      return std::nullopt;
    }
  }
}

// ---- Vm ----

bool Vm::Start(const std::string& scripts_dir, const std::string& image_dir,
               const std::string& work_dir, const std::string& name, const VmOptions& opt,
               std::string* err) {
  sock = work_dir + "/" + name + ".agent.sock";
  qmp = work_dir + "/" + name + ".qmp.sock";
  console_path = work_dir + "/" + name + ".console.log";
  log_path = work_dir + "/" + name + ".qemu.log";
  const std::string disk = work_dir + "/" + name + ".disk.img";
  for (const auto& p : {sock, qmp, console_path, log_path, disk}) unlink(p.c_str());
  // A 64 MiB sparse disk: the guest formats it, so get_disk_usage has a filesystem only the VM has.
  int diskfd = open(disk.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  bool disk_ok = diskfd >= 0 && ftruncate(diskfd, 64 << 20) == 0;
  if (diskfd >= 0) close(diskfd);
  if (!disk_ok) {
    *err = "cannot create " + disk;
    return false;
  }
  std::vector<std::string> argv = {scripts_dir + "/run-vm.sh",
                                   "--dir",
                                   image_dir,
                                   "--sock",
                                   sock,
                                   "--qmp",
                                   qmp,
                                   "--console",
                                   console_path,
                                   "--disk",
                                   disk};
  if (!opt.port) argv.push_back("--no-port");
  if (opt.no_reboot) argv.push_back("--no-reboot");
  int logfd = open(log_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (logfd < 0 || nullfd < 0) {
    *err = "cannot open " + log_path;
    return false;
  }
  // No --timeout: QEMU then replaces run-vm.sh, so PR_SET_PDEATHSIG takes it down with this binary.
  started = Clock::now();
  exit_status.reset();
  pid_ = fork();
  if (pid_ == 0) ExecChild(argv, nullfd, logfd);
  close(logfd);
  close(nullfd);
  if (pid_ < 0) {
    *err = "fork failed";
    return false;
  }
  // run-vm.sh logs its accelerator choice before QEMU starts; wait for that line.
  const auto deadline = Clock::now() + seconds(60);
  while (Clock::now() < deadline) {
    std::string log = ReadFile(log_path);
    size_t p = log.find("run-vm: accel=");
    if (p != std::string::npos && log.find('\n', p) != std::string::npos) {
      accel = log.substr(p + 14, log.find('\n', p) - p - 14);
      return true;
    }
    if (!running()) {
      *err = "run-vm.sh exited early: " + log;
      return false;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  *err = "run-vm.sh did not report an accelerator within 60 s: " + ReadFile(log_path);
  Kill();
  return false;
}

bool Vm::running() {
  if (pid_ < 0) return false;
  int st = 0;
  if (waitpid(pid_, &st, WNOHANG) == pid_) {
    exit_status = DecodeStatus(st);
    kill(-pid_, SIGKILL);  // anything QEMU left in its group
    pid_ = -1;
    return false;
  }
  return true;
}

std::optional<int> Vm::WaitExit(Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return exit_status;
}

void Vm::Kill() {
  if (pid_ < 0) return;
  kill(-pid_, SIGKILL);
  int st = 0;
  waitpid(pid_, &st, 0);
  exit_status = DecodeStatus(st);
  pid_ = -1;
}

std::string Vm::Console() const { return ReadFile(console_path); }

std::string Vm::Diagnostics() const {
  return "\n--- guest console (tail) ---\n" + Tail(Console(), 25) + "\n--- qemu log (tail) ---\n" +
         Tail(ReadFile(log_path), 10);
}

// ---- JSON helpers ----

bool TreeHasString(const json::value& v, const std::string& needle, bool ci) {
  auto lower = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    return s;
  };
  switch (v.kind()) {
    case json::kind::string: {
      std::string s(v.as_string());
      return ci ? lower(s).find(lower(needle)) != std::string::npos
                : s.find(needle) != std::string::npos;
    }
    case json::kind::array:
      for (const auto& e : v.as_array())
        if (TreeHasString(e, needle, ci)) return true;
      return false;
    case json::kind::object:
      for (const auto& kv : v.as_object())
        if (TreeHasString(kv.value(), needle, ci)) return true;
      return false;
    default:
      return false;
  }
}

const json::value* FindKey(const json::value& v, std::string_view key) {
  if (v.is_object()) {
    for (const auto& kv : v.as_object())
      if (kv.key() == key) return &kv.value();
    for (const auto& kv : v.as_object())
      if (const auto* f = FindKey(kv.value(), key)) return f;
  } else if (v.is_array()) {
    for (const auto& e : v.as_array())
      if (const auto* f = FindKey(e, key)) return f;
  }
  return nullptr;
}

std::string Short(const json::value& v, size_t max) {
  std::string s = json::serialize(v);
  if (s.size() > max) s = s.substr(0, max) + "...(" + std::to_string(s.size()) + " bytes)";
  return s;
}

}  // namespace vmtest
