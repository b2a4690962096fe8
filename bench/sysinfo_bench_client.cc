// Timing loop for bench/sysinfo_bench.sh: sends one request after another on one unix-socket
// connection and prints per-call latency. Speaks the agent's JSON-RPC or qemu-ga's QMP-style
// protocol so both agents are measured the same way. Plain POSIX, no dependencies.
//
//   sysinfo_bench_client SOCKET jsonrpc|qga ITERATIONS METHOD
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int Connect(const char* path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("connect");
    std::exit(3);
  }
  return fd;
}

// Reads one reply line; returns false on EOF/error.
bool ReadLine(int fd, std::string& pending, std::string& line) {
  for (;;) {
    size_t nl = pending.find('\n');
    if (nl != std::string::npos) {
      line.assign(pending, 0, nl);
      pending.erase(0, nl + 1);
      if (line.empty() || line == "\r") continue;
      return true;
    }
    char buf[65536];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return false;
    pending.append(buf, static_cast<size_t>(n));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s SOCKET jsonrpc|qga ITERATIONS METHOD\n", argv[0]);
    return 2;
  }
  bool qga = std::strcmp(argv[2], "qga") == 0;
  int iterations = std::atoi(argv[3]);
  std::string method = argv[4];
  int fd = Connect(argv[1]);
  std::string pending, line;
  std::vector<double> micros;
  size_t reply_bytes = 0;
  const int warmup = 10;
  for (int i = 0; i < warmup + iterations; ++i) {
    std::string req = qga ? "{\"execute\":\"" + method + "\"}\n"
                          : "{\"jsonrpc\":\"2.0\",\"method\":\"" + method +
                                "\",\"id\":" + std::to_string(i) + "}\n";
    auto t0 = std::chrono::steady_clock::now();
    if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) return 3;
    if (!ReadLine(fd, pending, line)) {
      std::fprintf(stderr, "connection closed\n");
      return 3;
    }
    auto t1 = std::chrono::steady_clock::now();
    if (line.find(qga ? "\"return\"" : "\"result\"") == std::string::npos) {
      std::fprintf(stderr, "%s failed: %.300s\n", method.c_str(), line.c_str());
      return 1;
    }
    if (i >= warmup) {
      micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      reply_bytes = line.size();
    }
  }
  std::sort(micros.begin(), micros.end());
  double sum = 0;
  for (double m : micros) sum += m;
  // median mean p90 bytes
  std::printf("%.1f %.1f %.1f %zu\n", micros[micros.size() / 2], sum / micros.size(),
              micros[micros.size() * 9 / 10], reply_bytes);
  return 0;
}
