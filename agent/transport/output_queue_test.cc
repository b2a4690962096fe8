#include "agent/transport/output_queue.h"

#include <fcntl.h>
#include <signal.h>
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

TEST(OutputQueue, BytesLeaveInOrderAcrossLinesPartialWritesAndTheWriteCap) {
  SocketPair pair;
  OutputQueue out(7);  // every write at most 7 bytes: lines are cut anywhere
  std::string expected;
  std::vector<int> sent;
  for (int i = 0; i < 200; ++i) {
    std::string line = "line " + std::to_string(i) + std::string(static_cast<size_t>(i % 13), 'x');
    expected += line + "\n";
    out.AppendLine(line, [&sent, i] { sent.push_back(i); });
  }
  EXPECT_EQ(out.pending(), expected.size());
  std::string got;
  char buf[4096];
  while (!out.empty()) {
    ASSERT_EQ(out.Flush(pair.writer.get()), 0);
    for (ssize_t n; (n = ::read(pair.reader.get(), buf, sizeof buf)) > 0;) got.append(buf, n);
  }
  EXPECT_EQ(got, expected);
  ASSERT_EQ(sent.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sent[static_cast<size_t>(i)], i);
}

TEST(OutputQueue, AHardErrorIsReturnedAndWhatWasSentIsStillReported) {
  SocketPair pair;
  OutputQueue out;
  int sent = 0;
  out.AppendLine("first", [&] { ++sent; });
  ASSERT_EQ(out.Flush(pair.writer.get()), 0);
  EXPECT_EQ(sent, 1);
  ::signal(SIGPIPE, SIG_IGN);  // as the agent does
  pair.reader.reset();         // the peer is gone
  out.AppendLine("second", [&] { ++sent; });
  EXPECT_EQ(out.Flush(pair.writer.get()), EPIPE);
  EXPECT_EQ(sent, 1);
  EXPECT_FALSE(out.empty());
  out.Clear();
  EXPECT_EQ(sent, 2);
}

}  // namespace
}  // namespace kvm
