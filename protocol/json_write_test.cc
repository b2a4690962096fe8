#include "protocol/json_write.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <string>

namespace kvm {
namespace {
namespace json = boost::json;

std::string Write(const json::value& v) {
  std::string out;
  AppendJson(out, v);
  return out;
}

TEST(JsonWrite, MatchesBoostSerializeForEveryKind) {
  json::value v = json::parse(R"({"a":null,"b":true,"c":false,"d":-9223372036854775808,
      "e":18446744073709551615,"f":1.5,"g":-0.0,"h":1e300,"i":[1,[2,{}],[]],"j":{"k":"v"},
      "l":"","m":"tab\there \"quoted\" back\\slash \u0001 \u001f","é":"ünïcödé €𝄞"})");
  EXPECT_EQ(Write(v), json::serialize(v));
}

TEST(JsonWrite, EscapesEachSpecialByteAtEveryOffsetOfAWord) {
  for (int special : {0, 1, 0x1f, int{'"'}, int{'\\'}, int{'\n'}}) {
    // 150 bytes: two 64-byte vector steps, then the 8-byte words and the tail.
    for (size_t pos = 0; pos < 150; ++pos) {
      std::string s(150, 'A');
      s[pos] = static_cast<char>(special);
      json::value v = json::string(s);
      std::string out = Write(v);
      EXPECT_EQ(out, json::serialize(v)) << "byte " << special << " at " << pos;
      EXPECT_EQ(json::parse(out), v);
      EXPECT_TRUE(NeedsJsonEscape(s));
    }
  }
}

TEST(JsonWrite, BytesThatNeedNoEscapeAreCopiedAsIs) {
  // Neighbours of the special bytes, and UTF-8 lead/continuation bytes, in every word position.
  std::string s =
      " !#[]^~\x7f"
      "\xc3\xa9"
      "\xe2\x82\xac"
      "ABCDEFGHIJKLMNOPQRSTUVWXYZ+/=";
  EXPECT_FALSE(NeedsJsonEscape(s));
  // The same bytes at every offset of a 64-byte vector step and of the word loop after it.
  for (size_t shift = 0; shift < 80; ++shift) {
    std::string longer = std::string(shift, 'a') + s + s + s;
    EXPECT_FALSE(NeedsJsonEscape(longer)) << shift;
  }
  EXPECT_EQ(Write(json::string(s)), "\"" + s + "\"");
  EXPECT_EQ(Write(json::string(s)), json::serialize(json::string(s)));
}

TEST(JsonWrite, LongBase64StringRoundTrips) {
  std::string data;
  for (int i = 0; i < 65536; ++i)
    data += "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i % 64];
  json::object result{{"data", data}, {"size", 49152}, {"eof", false}};
  std::string out = Write(result);
  EXPECT_EQ(out, json::serialize(result));
  EXPECT_EQ(json::parse(out), json::value(result));
}

}  // namespace
}  // namespace kvm
