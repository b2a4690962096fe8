#include "agent/transport/output_queue.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "agent/core/unique_fd.h"

namespace kvm {
namespace {

struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    writer.reset(fds[0]);
    reader.reset(fds[1]);
  }
  size_t Drain() {
    size_t total = 0;
    char buf[65536];
    for (ssize_t n; (n = ::read(reader.get(), buf, sizeof buf)) > 0;) total += n;
    return total;
  }
  UniqueFd writer, reader;
};

TEST(OutputQueue, SentCallbackRunsOnlyOnceItsLastByteIsTaken) {
  SocketPair pair;
  OutputQueue out;
  std::vector<int> sent;
  std::string big(4 << 20, 'a');  // far more than the socket buffers
  out.AppendLine(big, [&] { sent.push_back(1); });
  out.AppendLine("small", [&] { sent.push_back(2); });
  ASSERT_EQ(out.Flush(pair.writer.get()), 0);
  EXPECT_TRUE(sent.empty()) << "nothing is complete while the reader has not read";
  size_t received = 0;
  while (!out.empty()) {
    received += pair.Drain();
    ASSERT_EQ(out.Flush(pair.writer.get()), 0);
  }
  received += pair.Drain();
  EXPECT_EQ(received, big.size() + 1 + 6);
  EXPECT_EQ(sent, (std::vector<int>{1, 2}));
}

TEST(OutputQueue, ClearRunsTheCallbacksOfDroppedLines) {
  SocketPair pair;
  OutputQueue out;
  int sent = 0;
  out.AppendLine(std::string(4 << 20, 'a'), [&] { ++sent; });
  out.AppendLine("after", [&] { ++sent; });
  ASSERT_EQ(out.Flush(pair.writer.get()), 0);
  EXPECT_EQ(sent, 0);
  out.Clear();
  EXPECT_EQ(sent, 2);
  EXPECT_TRUE(out.empty());
  out.AppendLine("next", [&] { ++sent; });  // offsets start again after a Clear
  pair.Drain();
  ASSERT_EQ(out.Flush(pair.writer.get()), 0);
  EXPECT_EQ(sent, 3);
}

}  // namespace
}  // namespace kvm
