#include "agent/core/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "agent/core/unique_fd.h"

namespace kvm {

std::string SdNotifyTo(std::string_view socket_path, std::string_view state) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() < 2 || (socket_path[0] != '/' && socket_path[0] != '@')) {
    return "NOTIFY_SOCKET is not an absolute or abstract socket path";
  }
  if (socket_path.size() >= sizeof addr.sun_path) return "NOTIFY_SOCKET path too long";
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  if (socket_path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract namespace: the name is not NUL-terminated
  } else {
    len += 1;
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::string("socket: ") + std::strerror(errno);
  ssize_t sent;
  do {
    sent = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                    reinterpret_cast<const sockaddr*>(&addr), len);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return std::string("sendto NOTIFY_SOCKET: ") + std::strerror(errno);
  if (static_cast<size_t>(sent) != state.size()) return "short datagram to NOTIFY_SOCKET";
  return "";
}

std::string SdNotify(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || *path == '\0') return "";
  return SdNotifyTo(path, state);
}

}  // namespace kvm
