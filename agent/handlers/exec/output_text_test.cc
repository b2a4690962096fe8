#include "agent/handlers/exec/output_text.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "protocol/utf8.h"

namespace kvm::exec {
namespace {

TEST(OutputText, ValidUtf8IsRecognised) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii\n"));
  EXPECT_TRUE(IsValidUtf8("gr\xC3\xBC\xC3\x9F \xE2\x82\xAC \xF0\x9F\x98\x80"));
}

TEST(OutputText, InvalidUtf8IsRejected) {
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(
      IsValidUtf8("a\x80"
                  "b"));  // stray continuation
}

TEST(OutputText, IncompleteTailIsHeldBackOnlyWhenItCanStillBecomeValid) {
  EXPECT_EQ(IncompleteUtf8Tail("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xE2"), 1u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xE2\x82"), 2u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xE2\x82\xAC"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Tail("ab\xFF"), 0u);      // never valid: nothing to wait for
  EXPECT_EQ(IncompleteUtf8Tail("ab\xED\xA0"), 0u);  // surrogate prefix
}

TEST(OutputText, PutOutputChoosesTextOrBase64) {
  boost::json::object out;
  PutOutput(out, "stdout", "hello\n");
  EXPECT_EQ(out["stdout"].as_string(), "hello\n");
  EXPECT_EQ(out["stdout_encoding"].as_string(), "utf-8");
  PutOutput(out, "stderr", std::string("\x00\xFF", 2));
  EXPECT_EQ(out["stderr"].as_string(), "AP8=");
  EXPECT_EQ(out["stderr_encoding"].as_string(), "base64");
}

}  // namespace
}  // namespace kvm::exec
