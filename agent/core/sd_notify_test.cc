#include "agent/core/sd_notify.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "agent/core/unique_fd.h"

namespace kvm {
namespace {

// A datagram socket bound like systemd's notify socket; name[0]=='@' binds an abstract one.
UniqueFd BindDatagram(const std::string& name) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, name.data(), name.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (name[0] == '@') {
    addr.sun_path[0] = '\0';
  } else {
    ::unlink(name.c_str());
    len += 1;
  }
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len), 0) << std::strerror(errno);
  timeval tv{2, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

std::string Receive(int fd) {
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  return n < 0 ? "<nothing>" : std::string(buf, static_cast<size_t>(n));
}

std::string UniqueName(const char* prefix) {
  return std::string(prefix) + "kvm-sdnotify-" + std::to_string(::getpid());
}

TEST(SdNotify, DeliversStateToFilesystemSocket) {
  std::string path = ::testing::TempDir() + UniqueName("");
  UniqueFd server = BindDatagram(path);
  EXPECT_EQ(SdNotifyTo(path, "READY=1"), "");
  EXPECT_EQ(Receive(server.get()), "READY=1");
  ::unlink(path.c_str());
}

TEST(SdNotify, DeliversStateToAbstractSocket) {
  std::string name = UniqueName("@");
  UniqueFd server = BindDatagram(name);
  EXPECT_EQ(SdNotifyTo(name, "RELOADING=1"), "");
  EXPECT_EQ(Receive(server.get()), "RELOADING=1");
  // A filesystem path with the same spelling minus '@' must not reach the abstract socket.
  EXPECT_NE(SdNotifyTo("/" + name.substr(1), "X=1"), "");
}

TEST(SdNotify, UsesNotifySocketEnvironmentVariable) {
  std::string name = UniqueName("@env-");
  UniqueFd server = BindDatagram(name);
  ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
  EXPECT_EQ(SdNotify("STOPPING=1"), "");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(Receive(server.get()), "STOPPING=1");
}

TEST(SdNotify, UnsetVariableIsANoOp) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(SdNotify("READY=1"), "");
}

TEST(SdNotify, ReportsUnusableSocketPaths) {
  EXPECT_NE(SdNotifyTo("", "READY=1"), "");
  EXPECT_NE(SdNotifyTo("relative/path", "READY=1"), "");
  EXPECT_NE(SdNotifyTo("@", "READY=1"), "");
  EXPECT_NE(SdNotifyTo("/" + std::string(200, 'x'), "READY=1"), "");
  EXPECT_NE(SdNotifyTo("/nonexistent/kvm-notify.sock", "READY=1"), "");
}

}  // namespace
}  // namespace kvm
