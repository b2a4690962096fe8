// Compiled load generator for bench/run.sh: drives kvmmanager-agent, qemu-ga and the echo
// server over unix sockets. A scripted client would be the bottleneck, not the servers.
//
//   kvm-loadgen rate SOCKET LINE SECONDS CLIENTS DEPTH [EXPECT]
//       CLIENTS connections, each keeping DEPTH requests in flight, for SECONDS.
//       "{id}" in LINE becomes a per-request counter. Prints "rate <answers/s>".
//       With EXPECT, every reply must contain that text (else exit 1). LINE may hold several
//       requests separated by newlines: a call is answered when all of them are.
//   kvm-loadgen count SOCKET LINE N CLIENTS DEPTH   same, N requests in total, prints seconds
//   kvm-loadgen probe SOCKET LINE                   prints the one reply line
//   kvm-loadgen startup SOCKET LINE -- ARGV...      ms from spawn to first answered LINE
//   kvm-loadgen qga-exec SOCKET SECONDS             guest-exec "true" + status until exited
//   kvm-loadgen qga-transfer SOCKET PATH MB CHUNK   10 MB write then read via guest-file-*
//   kvm-loadgen echo-transfer SOCKET MB CHUNK       the same bytes as base64 lines, echoed
//   kvm-loadgen hold SOCKET SECONDS                 connects and stays idle (idle-CPU test)
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace {
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "kvm-loadgen: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

// quiet: one attempt, -1 on failure. Otherwise retries for 10 s: qemu-ga's listen backlog is
// tiny and it refuses connections while it works through the ones queued before.
int ConnectUnix(const std::string& path, bool quiet = false) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    int err = errno;
    ::close(fd);
    if (quiet) return -1;
    if ((err != ECONNREFUSED && err != EAGAIN) || Clock::now() > deadline) {
      errno = err;
      Die(("connect " + path).c_str());
    }
    ::usleep(1000);
  }
}

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("write");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Request lines with "{id}" replaced by a running number.
class LineMaker {
 public:
  explicit LineMaker(std::string_view tmpl)
      : lines_(1 + static_cast<uint64_t>(std::count(tmpl.begin(), tmpl.end(), '\n'))) {
    size_t pos = tmpl.find("{id}");
    if (pos == std::string_view::npos) {
      prefix_ = tmpl;
      has_id_ = false;
    } else {
      prefix_ = tmpl.substr(0, pos);
      suffix_ = tmpl.substr(pos + 4);
    }
  }
  void Append(std::string& out, uint64_t id) const {
    out += prefix_;
    if (has_id_) {
      char buf[24];
      auto end = std::to_chars(buf, buf + sizeof buf, id).ptr;
      out.append(buf, end);
      out += suffix_;
    }
    out += '\n';
  }
  // Requests per call: a template may hold several lines (qemu-ga commands that together give
  // what one agent method does); a call counts as answered once all of them are.
  uint64_t lines() const { return lines_; }

 private:
  std::string prefix_, suffix_;
  bool has_id_ = true;
  uint64_t lines_;
};

// Reads whatever is available into `buf`; returns complete lines through `on_line`.
class LineReader {
 public:
  // Returns false on EOF/error; waits at most timeout_ms.
  template <class F>
  bool Read(int fd, int timeout_ms, F&& on_line) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r == 0) return true;
    if (r < 0) return errno == EINTR;
    char chunk[256 * 1024];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) return n < 0 && errno == EINTR;
    buf_.append(chunk, static_cast<size_t>(n));
    size_t start = 0;
    for (;;) {
      size_t nl = buf_.find('\n', start);
      if (nl == std::string::npos) break;
      on_line(std::string_view(buf_).substr(start, nl - start));
      start = nl + 1;
    }
    buf_.erase(0, start);
    return true;
  }
  // Blocks until one line arrives (or timeout / EOF: returns empty + ok=false).
  bool ReadLine(int fd, std::string& line, int timeout_ms = 30000) {
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line.assign(buf_, 0, nl);
        buf_.erase(0, nl + 1);
        return true;
      }
      if (Clock::now() > deadline) return false;
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char chunk[256 * 1024];
      ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n <= 0) return false;
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  std::string buf_;
};

struct LoadResult {
  uint64_t answered = 0;
  double seconds = 0;
  bool bad = false;
};

// One client: keeps `depth` requests in flight until the deadline or `quota` answers.
void RunClient(const std::string& socket, const LineMaker& maker, Clock::time_point deadline,
               uint64_t quota, int depth, const std::string& expect, std::atomic<uint64_t>& total,
               std::atomic<bool>& bad, uint64_t id_base) {
  int fd = ConnectUnix(socket);
  LineReader reader;
  std::string out;
  uint64_t next_id = id_base, sent = 0, answered = 0;
  const uint64_t per_call = maker.lines();
  uint64_t lines = 0;  // replies of calls not yet complete
  auto send = [&](uint64_t n) {
    out.clear();
    for (uint64_t i = 0; i < n && sent < quota; ++i, ++sent) maker.Append(out, next_id++);
    if (!out.empty()) WriteAll(fd, out);
  };
  send(static_cast<uint64_t>(depth));
  while (answered < quota && Clock::now() < deadline) {
    uint64_t got = 0;
    if (!reader.Read(fd, 20, [&](std::string_view line) {
          if (++lines == per_call) {
            lines = 0;
            ++got;
          }
          if (!expect.empty() && line.find(expect) == std::string_view::npos) {
            if (!bad.exchange(true)) {
              std::fprintf(stderr, "unexpected reply: %.*s\n",
                           static_cast<int>(line.size() > 300 ? 300 : line.size()), line.data());
            }
          }
        })) {
      if (answered < quota && Clock::now() < deadline) {
        std::fprintf(stderr, "kvm-loadgen: connection closed by server\n");
        bad = true;
      }
      break;
    }
    answered += got;
    total += got;
    if (got) send(got);
  }
  // Read the replies still in flight (not counted) before closing: on a VM channel they would
  // otherwise go to whoever connects next.
  auto drain_deadline = Clock::now() + std::chrono::seconds(2);
  while (answered < sent && Clock::now() < drain_deadline) {
    if (!reader.Read(fd, 20, [&](std::string_view) {
          if (++lines == per_call) {
            lines = 0;
            ++answered;
          }
        })) {
      break;
    }
  }
  ::close(fd);
}

LoadResult Load(const std::string& socket, const std::string& line, double seconds, uint64_t count,
                int clients, int depth, const std::string& expect) {
  LineMaker maker(line);
  std::atomic<uint64_t> total{0};
  std::atomic<bool> bad{false};
  auto start = Clock::now();
  auto deadline = seconds > 0 ? start + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(seconds))
                              : Clock::time_point::max();
  uint64_t per_client = count ? (count + clients - 1) / clients : UINT64_MAX;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      RunClient(socket, maker, deadline, per_client, depth, expect, total, bad,
                static_cast<uint64_t>(c) << 40);
    });
  }
  for (auto& t : threads) t.join();
  LoadResult r;
  r.answered = total;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.bad = bad;
  return r;
}

int Probe(const std::string& socket, const std::string& line) {
  int fd = ConnectUnix(socket);
  WriteAll(fd, line + "\n");
  LineReader reader;
  std::string reply;
  bool ok = reader.ReadLine(fd, reply, 10000);
  ::close(fd);
  std::printf("%s\n", reply.c_str());
  return ok ? 0 : 1;
}

int Startup(const std::string& socket, const std::string& line, char** argv) {
  ::unlink(socket.c_str());
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  auto start = Clock::now();
  pid_t pid;
  if (int rc = ::posix_spawn(&pid, argv[0], nullptr, &attr, argv, environ); rc != 0) {
    errno = rc;
    Die("spawn");
  }
  double ms = -1;
  while (Clock::now() - start < std::chrono::seconds(10)) {
    int fd = ConnectUnix(socket, true);
    if (fd < 0) {
      ::usleep(100);
      continue;
    }
    WriteAll(fd, line + "\n");
    LineReader reader;
    std::string reply;
    if (reader.ReadLine(fd, reply, 5000)) {
      ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    }
    ::close(fd);
    break;
  }
  // qemu-ga 7.2 sometimes ignores SIGTERM right after start-up (seen twice: blocked in a
  // futex for minutes); a bench must not hang on it.
  ::kill(pid, SIGTERM);
  int status;
  for (int i = 0; ::waitpid(pid, &status, WNOHANG) == 0; ++i) {
    if (i == 200) {
      std::fprintf(stderr, "kvm-loadgen: %s ignored SIGTERM for 2 s; killing it\n", argv[0]);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    ::usleep(10000);
  }
  if (ms < 0) return 1;
  std::printf("startup_ms %.3f\n", ms);
  return 0;
}

std::string Call(int fd, LineReader& reader, const std::string& line) {
  WriteAll(fd, line + "\n");
  std::string reply;
  if (!reader.ReadLine(fd, reply)) {
    std::fprintf(stderr, "kvm-loadgen: no reply to %s\n", line.substr(0, 200).c_str());
    std::exit(1);
  }
  return reply;
}

long long NumberAfter(const std::string& text, std::string_view key) {
  size_t pos = text.find(key);
  if (pos == std::string::npos) return -1;
  pos += key.size();
  while (pos < text.size() && (text[pos] == ' ' || text[pos] == ':')) ++pos;
  return std::atoll(text.c_str() + pos);
}

int QgaExec(const std::string& socket, double seconds) {
  int fd = ConnectUnix(socket);
  LineReader reader;
  auto start = Clock::now();
  uint64_t done = 0;
  while (std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    std::string r =
        Call(fd, reader,
             R"({"execute":"guest-exec","arguments":{"path":"true","capture-output":true}})");
    long long pid = NumberAfter(r, "\"pid\"");
    if (pid <= 0) {
      std::fprintf(stderr, "guest-exec failed: %s\n", r.c_str());
      return 1;
    }
    for (;;) {
      std::string s = Call(
          fd, reader,
          R"({"execute":"guest-exec-status","arguments":{"pid":)" + std::to_string(pid) + "}}");
      if (s.find("\"exited\": true") != std::string::npos) break;
      if (s.find("\"error\"") != std::string::npos) {
        std::fprintf(stderr, "guest-exec-status failed: %s\n", s.c_str());
        return 1;
      }
    }
    ++done;
  }
  double t = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("rate %.1f\n", done / t);
  ::close(fd);
  return 0;
}

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
std::string Base64(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v =
        (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (i < in.size()) {
    unsigned v = (unsigned char)in[i] << 16;
    if (i + 1 < in.size()) v |= (unsigned char)in[i + 1] << 8;
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string Payload(size_t n) {
  std::string data(n, '\0');
  uint32_t x = 12345;
  for (auto& c : data) {
    x = x * 1103515245 + 12345;
    c = static_cast<char>(x >> 16);
  }
  return data;
}

int QgaTransfer(const std::string& socket, const std::string& path, double mb, size_t chunk) {
  int fd = ConnectUnix(socket);
  LineReader reader;
  size_t total = static_cast<size_t>(mb * 1024 * 1024);
  std::string data = Payload(total);
  auto t0 = Clock::now();
  std::string r =
      Call(fd, reader,
           R"({"execute":"guest-file-open","arguments":{"path":")" + path + R"(","mode":"w"}})");
  long long h = NumberAfter(r, "\"return\"");
  if (h <= 0) {
    std::fprintf(stderr, "open failed: %s\n", r.c_str());
    return 1;
  }
  for (size_t off = 0; off < total; off += chunk) {
    std::string b = Base64(std::string_view(data).substr(off, chunk));
    r = Call(fd, reader,
             R"({"execute":"guest-file-write","arguments":{"handle":)" + std::to_string(h) +
                 R"(,"buf-b64":")" + b + "\"}}");
    if (r.find("\"error\"") != std::string::npos) {
      std::fprintf(stderr, "write failed: %s\n", r.substr(0, 300).c_str());
      return 1;
    }
  }
  Call(fd, reader,
       R"({"execute":"guest-file-close","arguments":{"handle":)" + std::to_string(h) + "}}");
  double tw = std::chrono::duration<double>(Clock::now() - t0).count();
  auto t1 = Clock::now();
  r = Call(fd, reader,
           R"({"execute":"guest-file-open","arguments":{"path":")" + path + R"(","mode":"r"}})");
  h = NumberAfter(r, "\"return\"");
  size_t got = 0;
  for (;;) {
    r = Call(fd, reader,
             R"({"execute":"guest-file-read","arguments":{"handle":)" + std::to_string(h) +
                 R"(,"count":)" + std::to_string(chunk) + "}}");
    long long n = NumberAfter(r, "\"count\"");
    if (n < 0) {
      std::fprintf(stderr, "read failed: %s\n", r.substr(0, 300).c_str());
      return 1;
    }
    got += static_cast<size_t>(n);
    if (r.find("\"eof\": true") != std::string::npos || n == 0) break;
  }
  Call(fd, reader,
       R"({"execute":"guest-file-close","arguments":{"handle":)" + std::to_string(h) + "}}");
  double tr = std::chrono::duration<double>(Clock::now() - t1).count();
  ::close(fd);
  if (got != total) {
    std::fprintf(stderr, "read back %zu of %zu bytes\n", got, total);
    return 1;
  }
  std::printf("write_mbps %.1f\nread_mbps %.1f\n", mb / tw, mb / tr);
  return 0;
}

// The transport ceiling for transfers: the same base64 lines, one round trip per chunk.
int EchoTransfer(const std::string& socket, double mb, size_t chunk) {
  int fd = ConnectUnix(socket);
  LineReader reader;
  size_t total = static_cast<size_t>(mb * 1024 * 1024);
  std::string data = Payload(total);
  auto t0 = Clock::now();
  for (size_t off = 0; off < total; off += chunk) {
    std::string line = R"({"jsonrpc":"2.0","method":"x","params":{"data":")" +
                       Base64(std::string_view(data).substr(off, chunk)) + R"("},"id":1})";
    Call(fd, reader, line);
  }
  double t = std::chrono::duration<double>(Clock::now() - t0).count();
  ::close(fd);
  std::printf("mbps %.1f\n", mb / t);
  return 0;
}

int Usage() {
  std::fprintf(stderr, "usage: see the comment at the top of bench/loadgen.cc\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  if (argc < 3) return Usage();
  std::string cmd = argv[1];
  std::string socket = argv[2];
  if (cmd == "rate" && argc >= 7) {
    LoadResult r = Load(socket, argv[3], std::atof(argv[4]), 0, std::atoi(argv[5]),
                        std::atoi(argv[6]), argc > 7 ? argv[7] : "");
    std::printf("rate %.1f\nanswered %llu\n", r.answered / r.seconds,
                static_cast<unsigned long long>(r.answered));
    return r.bad ? 1 : 0;
  }
  if (cmd == "count" && argc >= 7) {
    LoadResult r = Load(socket, argv[3], 0, std::strtoull(argv[4], nullptr, 10), std::atoi(argv[5]),
                        std::atoi(argv[6]), argc > 7 ? argv[7] : "");
    std::printf("seconds %.3f\nanswered %llu\n", r.seconds,
                static_cast<unsigned long long>(r.answered));
    return r.bad ? 1 : 0;
  }
  if (cmd == "probe" && argc >= 4) return Probe(socket, argv[3]);
  if (cmd == "startup" && argc >= 6 && std::string(argv[4]) == "--") {
    return Startup(socket, argv[3], argv + 5);
  }
  if (cmd == "qga-exec" && argc >= 4) return QgaExec(socket, std::atof(argv[3]));
  if (cmd == "qga-transfer" && argc >= 6) {
    return QgaTransfer(socket, argv[3], std::atof(argv[4]), std::strtoull(argv[5], nullptr, 10));
  }
  if (cmd == "echo-transfer" && argc >= 5) {
    return EchoTransfer(socket, std::atof(argv[3]), std::strtoull(argv[4], nullptr, 10));
  }
  if (cmd == "hold" && argc >= 4) {
    int fd = ConnectUnix(socket);
    ::usleep(static_cast<useconds_t>(std::atof(argv[3]) * 1e6));
    ::close(fd);
    return 0;
  }
  return Usage();
}
