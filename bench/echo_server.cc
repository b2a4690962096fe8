// The transport ceiling: an epoll unix-socket server that sends every byte straight back.
// Same socket kind and event-loop shape as the agent, with no parsing at all.
//   kvm-echo-server SOCKET_PATH
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>

namespace {
struct Client {
  std::string pending;    // bytes the peer has not taken yet
  bool want_out = false;  // EPOLLOUT watched (only while bytes are pending, like the agent)
};
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvm-echo-server SOCKET_PATH\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
  ::unlink(argv[1]);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) || ::listen(lfd, 128)) {
    std::perror("bind/listen");
    return 1;
  }
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{EPOLLIN, {.fd = lfd}};
  ::epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  std::unordered_map<int, Client> clients;
  static char buf[256 * 1024];
  auto drop = [&](int fd) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    clients.erase(fd);
  };
  auto flush = [&](int fd, Client& c) -> bool {
    while (!c.pending.empty()) {
      ssize_t n = ::write(fd, c.pending.data(), c.pending.size());
      if (n < 0) return errno == EAGAIN;
      c.pending.erase(0, static_cast<size_t>(n));
    }
    return true;
  };
  for (;;) {
    epoll_event events[64];
    int n = ::epoll_wait(ep, events, 64, -1);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          epoll_event cev{EPOLLIN | EPOLLET, {.fd = c}};
          ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
          clients[c];
        }
        continue;
      }
      auto it = clients.find(fd);
      if (it == clients.end()) continue;
      if (!flush(fd, it->second)) {
        drop(fd);
        continue;
      }
      bool closed = false;
      for (;;) {
        ssize_t r = ::read(fd, buf, sizeof buf);
        if (r > 0) {
          if (it->second.pending.empty()) {
            ssize_t w = ::write(fd, buf, static_cast<size_t>(r));
            if (w < 0 && errno != EAGAIN) {
              closed = true;
              break;
            }
            if (w < 0) w = 0;
            if (w < r) it->second.pending.append(buf + w, static_cast<size_t>(r - w));
          } else {
            it->second.pending.append(buf, static_cast<size_t>(r));
          }
          continue;
        }
        if (r == 0 || errno != EAGAIN) closed = true;
        break;
      }
      if (closed) {
        drop(fd);
        continue;
      }
      Client& c = it->second;
      if (c.pending.empty() == c.want_out) {
        c.want_out = !c.pending.empty();
        epoll_event mev{EPOLLIN | EPOLLET | (c.want_out ? EPOLLOUT : 0u), {.fd = fd}};
        ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &mev);
      }
    }
  }
}
