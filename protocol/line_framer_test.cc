#include "protocol/line_framer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kvm {
namespace {

struct Collected {
  std::vector<std::string> lines;
  int oversized = 0;
};

Collected FeedAll(LineFramer& framer, const std::vector<std::string>& chunks) {
  Collected c;
  for (const auto& chunk : chunks) {
    framer.Feed(
        chunk, [&](std::string_view line) { c.lines.emplace_back(line); }, [&] { ++c.oversized; });
  }
  return c;
}

TEST(LineFramer, SplitsLinesWithinAndAcrossReads) {
  LineFramer framer(100);
  auto c = FeedAll(framer, {"a\nbb\ncc", "c\n", "d", "", "\n"});
  EXPECT_EQ(c.lines, (std::vector<std::string>{"a", "bb", "ccc", "d"}));
  EXPECT_EQ(c.oversized, 0);
}

TEST(LineFramer, StripsCarriageReturnAndSkipsBlankLines) {
  LineFramer framer(100);
  auto c = FeedAll(framer, {"\n\r\nx\r\n\n", "y\r", "\n"});
  EXPECT_EQ(c.lines, (std::vector<std::string>{"x", "y"}));
}

TEST(LineFramer, OversizedLineReportedOnceAndResynchronisesAtNewline) {
  LineFramer framer(8);
  auto c = FeedAll(framer, {"0123456789", "abcdef", "ghij\nok\n"});
  EXPECT_EQ(c.oversized, 1);
  EXPECT_EQ(c.lines, (std::vector<std::string>{"ok"}));
  EXPECT_EQ(framer.buffered(), 0u);
}

TEST(LineFramer, OversizedLineInOneReadIsDropped) {
  LineFramer framer(4);
  auto c = FeedAll(framer, {"123456\nabcd\n"});
  EXPECT_EQ(c.oversized, 1);
  EXPECT_EQ(c.lines, (std::vector<std::string>{"abcd"}));
}

TEST(LineFramer, LineOfExactlyTheCapIsAcceptedWithOrWithoutCr) {
  LineFramer framer(4);
  auto c = FeedAll(framer, {"abcd\n", "ab", "cd\r\n", "abcde\n"});
  EXPECT_EQ(c.lines, (std::vector<std::string>{"abcd", "abcd"}));
  EXPECT_EQ(c.oversized, 1);
}

TEST(LineFramer, NeverBuffersMoreThanTheCapWhileSkipping) {
  LineFramer framer(16);
  std::string chunk(4096, 'x');
  int oversized = 0;
  for (int i = 0; i < 1000; ++i) {
    framer.Feed(
        chunk, [](std::string_view) {}, [&] { ++oversized; });
    ASSERT_LE(framer.buffered(), 17u);
  }
  EXPECT_EQ(oversized, 1);
}

TEST(LineFramer, ResetDropsPartialLine) {
  LineFramer framer(100);
  auto c = FeedAll(framer, {"partial"});
  framer.Reset();
  c = FeedAll(framer, {"fresh\n"});
  EXPECT_EQ(c.lines, (std::vector<std::string>{"fresh"}));
}

}  // namespace
}  // namespace kvm
