#include "agent/transport/listener.h"

#include <linux/vm_sockets.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

namespace kvm {
namespace {
constexpr size_t kMaxSessions = 1024;
// Out of file descriptors, accept() fails at once and the listener stays readable: the
// listener is left unwatched this long before trying again, rather than spinning.
constexpr auto kOutOfFdsPause = std::chrono::milliseconds(100);

// Connects to a unix socket path: 0 if something accepts (or would: EAGAIN, a full backlog),
// else the errno (ECONNREFUSED: nobody listens, a stale socket).
int ProbeSocket(const std::string& path) {
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!probe) return errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return 0;
  return errno == EAGAIN || errno == EINPROGRESS ? 0 : errno;
}

}  // namespace

std::string ListenAddress::ToString() const {
  return kind == Kind::kUnix ? "unix:" + path : "vsock:" + std::to_string(port);
}

ListenAddress ParseListenAddress(const std::string& spec) {
  if (spec.rfind("unix:", 0) == 0) {
    ListenAddress a{ListenAddress::Kind::kUnix, spec.substr(5)};
    if (a.path.empty()) throw std::invalid_argument("unix: needs a socket path");
    if (a.path.size() >= sizeof(sockaddr_un::sun_path)) {
      throw std::invalid_argument("unix socket path is too long (max 107 bytes): " + a.path);
    }
    return a;
  }
  if (spec.rfind("vsock:", 0) == 0) {
    std::string digits = spec.substr(6);
    if (digits.empty() || digits.size() > 10 ||
        digits.find_first_not_of("0123456789") != std::string::npos ||
        std::stoull(digits) > 0xFFFFFFFEull) {
      throw std::invalid_argument("vsock: needs a port number (0-4294967294): " + spec);
    }
    ListenAddress a{ListenAddress::Kind::kVsock, {}};
    a.port = static_cast<uint32_t>(std::stoull(digits));
    return a;
  }
  throw std::invalid_argument("listen address must be unix:PATH or vsock:PORT, got: " + spec);
}

Listener::Listener(EventLoop& loop, Dispatcher& dispatcher, Logger& log, ListenAddress address)
    : loop_(loop), dispatcher_(dispatcher), log_(log), address_(std::move(address)) {
  auto fail = [&](const char* what) {
    throw std::system_error(errno, std::generic_category(),
                            std::string(what) + " " + address_.ToString());
  };
  if (address_.kind == ListenAddress::Kind::kUnix) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd_) fail("socket");
    // A stale socket from an earlier run is replaced, but never a file someone named, nor
    // the socket of an agent still serving there (it would be orphaned, unreachable).
    struct stat st;
    if (::lstat(address_.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        throw std::runtime_error("bind " + address_.ToString() + ": " + address_.path +
                                 " exists and is not a socket");
      }
      if (int err = ProbeSocket(address_.path); err != ECONNREFUSED && err != ENOENT) {
        throw std::runtime_error(err == 0 ? "another agent is listening on " + address_.path
                                          : "cannot tell whether " + address_.path +
                                                " is in use: connect: " + std::strerror(err));
      }
    }
    // Bound under a temporary name and renamed into place once listening: a client that
    // connects as soon as the file appears is never refused (a bare bind() makes the file
    // appear a moment before listen()). Paths too long for the temporary name bind directly.
    std::string temp = address_.path + ".new-" + std::to_string(::getpid());
    bool via_temp = temp.size() < sizeof(sockaddr_un::sun_path);
    const std::string& bound = via_temp ? temp : address_.path;
    ::unlink(bound.c_str());  // a stale socket (the lstat above vouches for the direct name)
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, bound.c_str(), bound.size());
    mode_t old_mask = ::umask(0177);  // the socket is created 0600: root's agent, root's host tools
    int rc = ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::umask(old_mask);
    if (rc != 0) fail("bind");
    if (::listen(fd_.get(), 128) != 0 ||
        (via_temp && ::rename(temp.c_str(), address_.path.c_str()) != 0)) {
      int saved = errno;
      ::unlink(bound.c_str());
      errno = saved;
      fail(via_temp ? "listen or rename into place" : "listen");
    }
  } else {
    fd_.reset(::socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd_) fail("socket");
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = address_.port;
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) fail("bind");
    if (::listen(fd_.get(), 128) != 0) fail("listen");
  }
  WatchForClients();
  LOG_INFO(log_, "listening on %s", address_.ToString().c_str());
}

Listener::~Listener() {
  StopAccepting();
  auto sessions = std::move(sessions_);
  for (auto& [id, session] : sessions) session->Close();
}

void Listener::StopAccepting() {
  if (!fd_) return;
  if (resume_timer_ != 0) {
    loop_.CancelTimer(resume_timer_);
    resume_timer_ = 0;
  } else {
    loop_.Unwatch(fd_.get());
  }
  fd_.reset();
  if (address_.kind == ListenAddress::Kind::kUnix) ::unlink(address_.path.c_str());
  // Copy: StopReading may close a session, which erases it from the map.
  auto sessions = sessions_;
  for (auto& [id, session] : sessions) session->StopReading();
}

void Listener::Accept() {
  while (fd_) {
    int client = ::accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        PauseAccepting(errno);
      } else if (errno != EAGAIN) {
        LOG_WARN(log_, "accept on %s: %s", address_.ToString().c_str(), std::strerror(errno));
      }
      return;
    }
    if (out_of_fds_) {
      out_of_fds_ = false;
      LOG_INFO(log_, "accepting clients on %s again", address_.ToString().c_str());
    }
    UniqueFd fd(client);
    if (sessions_.size() >= kMaxSessions) {
      LOG_WARN(log_, "refusing client on %s: %zu sessions open", address_.ToString().c_str(),
               sessions_.size());
      continue;
    }
    uint64_t id = next_session_++;
    auto session = std::make_shared<StreamSession>(loop_, dispatcher_, log_, std::move(fd),
                                                   address_.ToString() + "#" + std::to_string(id),
                                                   [this, id] { OnSessionClosed(id); });
    sessions_.emplace(id, session);
    session->Start();
  }
}

void Listener::WatchForClients() {
  loop_.Watch(fd_.get(), EPOLLIN, [this](uint32_t) { Accept(); });
}

void Listener::PauseAccepting(int error) {
  if (!out_of_fds_) {  // once per episode: the retries below would otherwise log 10 lines a second
    out_of_fds_ = true;
    LOG_WARN(log_, "accept on %s: %s; pending clients wait until descriptors are freed",
             address_.ToString().c_str(), std::strerror(error));
  }
  loop_.Unwatch(fd_.get());
  resume_timer_ = loop_.AddTimer(kOutOfFdsPause, [this] {
    resume_timer_ = 0;
    if (fd_) WatchForClients();
  });
}

void Listener::OnSessionClosed(uint64_t id) {
  sessions_.erase(id);
  // Clients that flooded or stopped reading leave their buffers' heap behind (128 MB after 20
  // stalled clients, kept after they closed: glibc trims only the top of the heap). With no
  // client left, give what is free back; later, from the loop, not inside the session's close.
  if (sessions_.empty()) loop_.Post([] { ::malloc_trim(0); });
}

}  // namespace kvm
