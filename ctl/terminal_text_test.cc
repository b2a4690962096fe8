#include "ctl/terminal_text.h"

#include <gtest/gtest.h>

namespace kvm {
namespace {

TEST(ForTerminal, ControlCharactersBecomeQuestionMarks) {
  EXPECT_EQ(ForTerminal("a\x1b]0;owned\x07z"), "a?]0;owned?z");
  EXPECT_EQ(ForTerminal("new\nline\ttab\rcr\x7f"), "new?line?tab?cr?");
  EXPECT_EQ(ForTerminal(std::string("nul\0x", 5)), "nul?x");
  EXPECT_EQ(ForTerminal("csi\xc2\x9b" "31m"), "csi?31m");  // U+009B, the 8-bit CSI
  EXPECT_EQ(ForTerminal("nel\xc2\x85"), "nel?");
}

TEST(ForTerminal, PrintableTextAndOtherUtf8StayAsTheyAre) {
  EXPECT_EQ(ForTerminal("plain /usr/bin/sleep 30"), "plain /usr/bin/sleep 30");
  EXPECT_EQ(ForTerminal("caf\xc3\xa9 \xc2\xa0nbsp \xe2\x82\xac"),
            "caf\xc3\xa9 \xc2\xa0nbsp \xe2\x82\xac");
  EXPECT_EQ(ForTerminal("\xc2"), "\xc2");  // a lone lead byte at the end is not a control
  EXPECT_EQ(ForTerminal(""), "");
}

}  // namespace
}  // namespace kvm
