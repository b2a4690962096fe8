// Moves a file each way through the real agent over a unix socket, next to qemu-ga doing the
// same with guest-file-open/read/write/close, and next to the raw socket's own bandwidth.
// Prints MB/s (1 MB = 10^6 bytes of file payload). Usage:
//   transfer_bench [--agent PATH] [--qemu-ga PATH] [--mb N] [--window N] [--repeat N]
//                  [--only upload|download] [--dir PARENT]
// The files live in a new directory under PARENT (default /tmp; /dev/shm leaves the disk out).
// --only runs just that direction through the agent (no raw socket, no qemu-ga), for profiles
// and `perf stat` of one direction. Each of the --repeat rounds runs every measurement once
// (interleaved), and figures are medians over the rounds.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ctl/agent_client.h"
#include "ctl/file_transfer.h"
#include "protocol/base64.h"
#include "startup/malloc_tuning.h"

extern char** environ;

namespace {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

// Medians, not maxima: with a few 20 ms runs per figure, the best run swings by +-20% between
// invocations on a shared 2-core machine, the median much less.
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

pid_t Spawn(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    std::fprintf(stderr, "cannot run %s: %s\n", argv[0].c_str(), std::strerror(rc));
    std::exit(1);
  }
  return pid;
}

void Stop(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

std::unique_ptr<kvm::AgentClient> ConnectRetry(const std::string& sock) {
  for (int i = 0; i < 500; ++i) {
    try {
      return std::make_unique<kvm::AgentClient>(sock, std::chrono::seconds(120));
    } catch (const kvm::ClientError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::fprintf(stderr, "cannot connect to %s\n", sock.c_str());
  std::exit(1);
}

std::string ReadAll(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY);
  char buf[1 << 16];
  ssize_t n;
  while (fd >= 0 && (n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  if (fd >= 0) ::close(fd);
  return out;
}

void WriteAllFile(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
  ::close(fd);
}

// One-way stream of `bytes` through a connected unix stream socket, 64 KiB writes.
double RawSocketMBps(const std::string& dir, size_t bytes) {
  std::string path = dir + "/raw.sock";
  int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::listen(listener, 1);
  std::thread reader([listener, bytes] {
    int fd = ::accept(listener, nullptr, nullptr);
    std::vector<char> buf(1 << 16);
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    ::write(fd, "k", 1);
    ::close(fd);
  });
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  std::vector<char> chunk(1 << 16, 'x');
  auto start = Clock::now();
  size_t sent = 0;
  while (sent < bytes) {
    ssize_t n = ::write(fd, chunk.data(), std::min(chunk.size(), bytes - sent));
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  char ack;
  ::read(fd, &ack, 1);
  double secs = Seconds(start);
  reader.join();
  ::close(fd);
  ::close(listener);
  ::unlink(path.c_str());
  return static_cast<double>(bytes) / 1e6 / secs;
}

json::value QgaCall(kvm::AgentClient& client, const std::string& line) {
  client.SendLine(line);
  json::value reply = json::parse(client.ReadLine());
  if (!reply.is_object() || !reply.as_object().contains("return")) {
    std::fprintf(stderr, "qemu-ga error: %s\n", json::serialize(reply).substr(0, 300).c_str());
    std::exit(1);
  }
  return reply.at("return");
}

constexpr size_t kQgaChunks[] = {4096, 65536, size_t{1} << 20, size_t{4} << 20};

// qemu-ga serving one client for the whole run, so its rounds can sit between the agent's.
class QgaPeer {
 public:
  QgaPeer(const std::string& qga, const std::string& dir) : target_(dir + "/qga.bin") {
    std::string sock = dir + "/qga.sock";
    std::string state = dir + "/qga-state";
    std::filesystem::create_directories(state);
    pid_ = Spawn({qga, "-m", "unix-listen", "-p", sock, "-t", state});
    client_ = ConnectRetry(sock);
  }
  ~QgaPeer() {
    client_.reset();
    Stop(pid_);
  }

  // Copies the local file `src` (holding `data`) to the guest and back to the local file
  // `back` through guest-file-* in `chunk`-byte calls; MB/s each way. Like the agent's rounds,
  // it reads the upload from a file and writes the download to one as it arrives.
  std::pair<double, double> Round(const std::string& data, const std::string& src,
                                  const std::string& back, size_t chunk) {
    int in = ::open(src.c_str(), O_RDONLY);
    std::string piece(chunk, '\0');
    auto start = Clock::now();
    int64_t h = QgaCall(*client_, R"({"execute":"guest-file-open","arguments":{"path":")" +
                                      target_ + R"(","mode":"w"}})")
                    .as_int64();
    for (size_t off = 0; off < data.size(); off += chunk) {
      ssize_t n = ::pread(in, piece.data(), chunk, static_cast<off_t>(off));
      if (n <= 0) {
        std::fprintf(stderr, "cannot read %s\n", src.c_str());
        std::exit(1);
      }
      std::string line = R"({"execute":"guest-file-write","arguments":{"handle":)" +
                         std::to_string(h) + R"(,"buf-b64":")";
      kvm::Base64Append(line, std::string_view(piece).substr(0, static_cast<size_t>(n)));
      line += "\"}}";
      QgaCall(*client_, line);
    }
    QgaCall(*client_,
            R"({"execute":"guest-file-close","arguments":{"handle":)" + std::to_string(h) + "}}");
    double w = static_cast<double>(data.size()) / 1e6 / Seconds(start);
    if (ReadAll(target_) != data) {
      std::fprintf(stderr, "qemu-ga wrote a different file\n");
      std::exit(1);
    }

    ::close(in);

    int out = ::open(back.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    start = Clock::now();
    h = QgaCall(*client_, R"({"execute":"guest-file-open","arguments":{"path":")" + target_ +
                              R"(","mode":"r"}})")
            .as_int64();
    for (;;) {
      json::value ret =
          QgaCall(*client_, R"({"execute":"guest-file-read","arguments":{"handle":)" +
                                std::to_string(h) + R"(,"count":)" + std::to_string(chunk) + "}}");
      kvm::Base64Decode(ret.at("buf-b64").as_string(), piece);
      if (!piece.empty() &&
          ::write(out, piece.data(), piece.size()) != static_cast<ssize_t>(piece.size())) {
        std::fprintf(stderr, "cannot write %s\n", back.c_str());
        std::exit(1);
      }
      if (ret.at("eof").as_bool() || piece.empty()) break;
    }
    QgaCall(*client_,
            R"({"execute":"guest-file-close","arguments":{"handle":)" + std::to_string(h) + "}}");
    double rd = static_cast<double>(data.size()) / 1e6 / Seconds(start);
    ::close(out);
    if (ReadAll(back) != data) {
      std::fprintf(stderr, "qemu-ga read a different file\n");
      std::exit(1);
    }
    return {w, rd};
  }

 private:
  std::string target_;
  pid_t pid_ = -1;
  std::unique_ptr<kvm::AgentClient> client_;
};

}  // namespace

int main(int argc, char** argv) {
  kvm::TuneMallocForMessages();  // as kvmmanager-ctl does
  std::string agent_bin = KVM_AGENT_BINARY_PATH;
  std::string qga = "/usr/sbin/qemu-ga";
  double mb = 10;
  int window = 4, repeat = 3;
  std::string only;
  std::string parent = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--agent")
      agent_bin = v;
    else if (k == "--qemu-ga")
      qga = v;
    else if (k == "--mb")
      mb = std::stod(v);
    else if (k == "--window")
      window = std::stoi(v);
    else if (k == "--repeat")
      repeat = std::stoi(v);
    else if (k == "--only" && (v == "upload" || v == "download"))
      only = v;
    else if (k == "--dir")
      parent = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  std::string tmpl = parent + "/kvm-bench-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "cannot create a directory in %s: %s\n", parent.c_str(),
                 std::strerror(errno));
    return 2;
  }
  std::string dir = tmpl;
  size_t size = static_cast<size_t>(mb * 1e6);
  std::string data(size, '\0');
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  std::string src = dir + "/src.bin";
  WriteAllFile(src, data);

  std::string config = dir + "/config.json";
  WriteAllFile(config, R"({"log_file":null,"max_message_size_kb":64,"max_concurrent_requests":10,)"
                       R"("security":{"allowed_read_paths":[")" +
                           dir + R"("],"allowed_write_paths":[")" + dir +
                           R"("],"max_file_size_mb":)" + std::to_string(static_cast<int>(mb) + 2) +
                           "}}");
  std::string sock = dir + "/agent.sock";
  pid_t agent = Spawn({agent_bin, "--foreground", "--config", config, "--listen", "unix:" + sock,
                       "--log-level", "warn"});
  auto client = ConnectRetry(sock);
  bool have_qga = only.empty() && ::access(qga.c_str(), X_OK) == 0;
  std::unique_ptr<QgaPeer> peer;
  if (have_qga) peer = std::make_unique<QgaPeer>(qga, dir);
  kvm::transfer::Options topt;
  topt.window = window;
  // Each round runs everything once (raw socket, the agent each way, qemu-ga at every chunk
  // size), so a slow spell on this shared machine hits both sides of a ratio alike.
  std::vector<double> raws, ups, downs, streams;
  std::vector<std::vector<double>> qwrites(std::size(kQgaChunks)), qreads(std::size(kQgaChunks));
  for (int r = 0; r < repeat; ++r) {
    if (only.empty()) raws.push_back(RawSocketMBps(dir, size));
    if (only != "download") {
      int fd = ::open(src.c_str(), O_RDONLY);
      auto start = Clock::now();
      kvm::transfer::Upload(*client, fd, size, dir + "/up.bin", topt);
      ups.push_back(static_cast<double>(size) / 1e6 / Seconds(start));
      ::close(fd);
      if (ReadAll(dir + "/up.bin") != data) {
        std::fprintf(stderr, "agent upload produced a different file\n");
        return 1;
      }
    }
    if (only == "upload") continue;
    std::string back = dir + "/down.bin";
    int fd = ::open(back.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    auto start = Clock::now();
    kvm::transfer::Download(*client, only.empty() ? dir + "/up.bin" : src, fd, topt);
    downs.push_back(static_cast<double>(size) / 1e6 / Seconds(start));
    ::close(fd);
    // With --only the copy is checked once, so a profile shows the transfer, not the check.
    if ((only.empty() || r == 0) && ReadAll(back) != data) {
      std::fprintf(stderr, "agent download produced a different file\n");
      return 1;
    }
    if (!only.empty()) continue;
    // The same reads without either sha256 pass (kvmmanager-ctl cat): what the transport path
    // itself costs, next to the raw socket.
    fd = ::open(back.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    start = Clock::now();
    kvm::transfer::Stream(*client, dir + "/up.bin", fd, topt);
    streams.push_back(static_cast<double>(size) / 1e6 / Seconds(start));
    ::close(fd);
    if (ReadAll(back) != data) {
      std::fprintf(stderr, "agent stream produced a different file\n");
      return 1;
    }
    for (size_t c = 0; peer && c < std::size(kQgaChunks); ++c) {
      auto [w, rd] = peer->Round(data, src, dir + "/qga-back.bin", kQgaChunks[c]);
      qwrites[c].push_back(w);
      qreads[c].push_back(rd);
    }
  }
  client.reset();
  Stop(agent);
  peer.reset();
  double up = Median(ups), down = Median(downs), stream = Median(streams);

  if (!only.empty()) {
    std::printf("agent %s, %.1f MB, median of %d, window %d: %.1f MB/s\n", only.c_str(), mb, repeat,
                window, only == "upload" ? up : down);
    std::filesystem::remove_all(dir);
    return 0;
  }
  // qemu-ga at its best: the chunk size with the best median, each way.
  size_t qw = 0, qr = 0;
  for (size_t c = 1; have_qga && c < std::size(kQgaChunks); ++c) {
    if (Median(qwrites[c]) > Median(qwrites[qw])) qw = c;
    if (Median(qreads[c]) > Median(qreads[qr])) qr = c;
  }
  // Also the median of the ratios within each round (the agent against qemu-ga's best chunk
  // size in that same round): steadier than a ratio of medians when the machine's speed drifts.
  auto round_ratio = [&](const std::vector<double>& agent_runs, const std::vector<double>& q) {
    std::vector<double> ratios;
    for (size_t i = 0; i < agent_runs.size() && i < q.size(); ++i)
      ratios.push_back(agent_runs[i] / q[i]);
    return Median(ratios);
  };
  double raw = Median(raws);
  double limit = raw * 3 / 4;  // payload ceiling once base64 inflates it by 4/3
  std::printf(
      "file transfer, %.1f MB of random bytes, unix socket, median of %d interleaved rounds, "
      "window %d\n",
      mb, repeat, window);
  std::printf("%-44s %9.1f MB/s\n", "raw socket stream (64 KiB writes)", raw);
  std::printf("%-44s %9.1f MB/s\n", "raw limit after base64 (x 3/4)", limit);
  auto agent_row = [&](const char* label, double mbps, const std::vector<double>& runs,
                       const std::vector<double>* q) {
    std::printf("%-44s %9.1f MB/s  raw-limit/agent %.2f", label, mbps, limit / mbps);
    if (q)
      std::printf("  %.1fx qemu-ga (per-round median %.1fx)", mbps / Median(*q),
                  round_ratio(runs, *q));
    std::printf("\n");
  };
  agent_row("agent upload (file_upload_*, sha256)", up, ups, have_qga ? &qwrites[qw] : nullptr);
  agent_row("agent download (file_read, sha256)", down, downs, have_qga ? &qreads[qr] : nullptr);
  agent_row("agent download, no sha256 (as ctl cat)", stream, streams,
            have_qga ? &qreads[qr] : nullptr);
  if (have_qga) {
    std::printf("%-44s %9.1f MB/s  (best chunk %zu bytes, by median)\n", "qemu-ga guest-file-write",
                Median(qwrites[qw]), kQgaChunks[qw]);
    std::printf("%-44s %9.1f MB/s  (best chunk %zu bytes, by median)\n", "qemu-ga guest-file-read",
                Median(qreads[qr]), kQgaChunks[qr]);
  } else {
    std::printf("qemu-ga not found at %s: no comparison\n", qga.c_str());
  }
  std::filesystem::remove_all(dir);
  return 0;
}
