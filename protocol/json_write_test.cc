#include "protocol/json_write.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <random>
#include <string>

namespace kvm {
namespace {
namespace json = boost::json;

std::string Write(const json::value& v) {
  std::string out;
  AppendJson(out, v);
  return out;
}

TEST(JsonWrite, MatchesBoostSerializeForEveryKindButDoubles) {
  json::value v = json::parse(R"({"a":null,"b":true,"c":false,"d":-9223372036854775808,
      "e":18446744073709551615,"i":[1,[2,{}],[]],"j":{"k":"v"},
      "l":"","m":"tab\there \"quoted\" back\\slash \u0001 \u001f","é":"ünïcödé €𝄞"})");
  EXPECT_EQ(Write(v), json::serialize(v));
}

TEST(JsonWrite, DoublesReadAsPeopleWriteThemAndRoundTrip) {
  EXPECT_EQ(Write(42570.27), "42570.27");  // Boost: 4.257027E4
  EXPECT_EQ(Write(1.24), "1.24");          // Boost: 1.24E0
  EXPECT_EQ(Write(2095.999), "2095.999");
  EXPECT_EQ(Write(3.0), "3.0");  // integral, still a double when read back
  EXPECT_EQ(Write(-0.0), "-0.0");
  EXPECT_EQ(Write(1e300), "1e+300");
  EXPECT_EQ(Write(1.5e-7), "1.5e-7");
  EXPECT_EQ(Write(0.000123), "0.000123");
  EXPECT_EQ(Write(-2.5e20), "-250000000000000000000.0");
  EXPECT_EQ(Write(1e21), "1e+21");
  for (double d : {42570.27, 1.24, 3.0, -0.0, 1e300, 1.5e-7, 0.1 + 0.2, 5e-324,
                   1.7976931348623157e308, -123456789.125}) {
    json::value back = json::parse(Write(d));
    ASSERT_TRUE(back.is_double()) << Write(d);
    EXPECT_EQ(back.get_double(), d) << Write(d);
    EXPECT_EQ(std::signbit(back.get_double()), std::signbit(d)) << Write(d);
  }
  json::value nested = json::parse(R"({"load":[1.5,0.25],"uptime_seconds":42570.27})");
  EXPECT_EQ(Write(nested), R"({"load":[1.5,0.25],"uptime_seconds":42570.27})");
}

std::string Shortest(double d) {
  std::string out;
  AppendShortestDouble(out, d);
  return out;
}

TEST(JsonWrite, ShortDecimalsAreWrittenAsTheShortestDigitsSearchWritesThem) {
  std::mt19937_64 rng(20261127);
  auto check = [](double d) {
    std::string fast;
    AppendDouble(fast, d);
    ASSERT_EQ(fast, Shortest(d)) << std::hexfloat << d;
  };
  // Decimals with 0-4 places (4 is past the fast route) across magnitudes, both signs.
  const double scales[] = {1, 10, 100, 1000, 10000};
  for (int i = 0; i < 200000; ++i) {
    uint64_t digits = rng() % 1000000000000000000ULL;
    digits /= static_cast<uint64_t>(std::pow(10.0, static_cast<double>(rng() % 19)));
    double d = static_cast<double>(digits) / scales[rng() % 5];
    check(rng() % 2 ? d : -d);
  }
  // Arbitrary doubles (mostly long fractions) and the edges of the fast route.
  for (int i = 0; i < 200000; ++i) {
    double d = std::ldexp(static_cast<double>(rng() >> 11), static_cast<int>(rng() % 120) - 80);
    check(d);
  }
  for (double d : {1e-3, 0.00099999, 0.0015, 99999999999999.9, 1e14, 1e14 - 1, 999999999999.999,
                   999999999999999.0, 1e15, 9007199254740993.0, 0.1 + 0.2, 2596.132, 0.6, 910.94,
                   4503599627370495.5}) {
    check(d);
    check(-d);
  }
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
  // Neighbours of the special bytes in every word position: ASCII needs nothing but quotes.
  std::string s =
      " !#[]^~\x7f"
      "ABCDEFGHIJKLMNOPQRSTUVWXYZ+/=";
  EXPECT_FALSE(NeedsJsonEscape(s));
  // The same bytes at every offset of a 64-byte vector step and of the word loop after it.
  for (size_t shift = 0; shift < 80; ++shift) {
    std::string longer = std::string(shift, 'a') + s + s + s;
    EXPECT_FALSE(NeedsJsonEscape(longer)) << shift;
  }
  EXPECT_EQ(Write(json::string(s)), "\"" + s + "\"");
  EXPECT_EQ(Write(json::string(s)), json::serialize(json::string(s)));
  // Valid UTF-8 takes the careful path (it is checked) and comes out unchanged.
  std::string utf8 = s + "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  EXPECT_TRUE(NeedsJsonEscape(utf8));
  for (size_t shift = 0; shift < 80; ++shift) {
    std::string longer = std::string(shift, 'a') + utf8;
    EXPECT_TRUE(NeedsJsonEscape(longer)) << shift;
    EXPECT_EQ(Write(json::string(longer)), "\"" + longer + "\"") << shift;
  }
}

// File and process names from the system need not be UTF-8, and JSON text must be: every byte
// that is not part of a valid sequence becomes U+FFFD, in keys and values, short and long.
TEST(JsonWrite, InvalidUtf8BecomesReplacementCharacters) {
  const std::string fffd = "\xef\xbf\xbd";
  EXPECT_EQ(Write(json::string(std::string("\xff\xfe"))), "\"" + fffd + fffd + "\"");
  EXPECT_EQ(Write(json::string(std::string("a\xc3("))), "\"a" + fffd + "(\"");  // cut sequence
  EXPECT_EQ(Write(json::string(std::string("\xc0\xaf"))), "\"" + fffd + fffd + "\"");  // overlong
  EXPECT_EQ(Write(json::string(std::string("\xed\xa0\x80"))),
            "\"" + fffd + fffd + fffd + "\"");                                      // surrogate
  EXPECT_EQ(Write(json::string(std::string("q\"\xff"))), "\"q\\\"" + fffd + "\"");  // + escape
  std::string long_name = std::string(5000, 'x') + "\xff" + std::string(100, 'y');
  json::object obj{{std::string("k\xfe"), long_name}};
  std::string out = Write(obj);
  json::value back = json::parse(out);  // throws on invalid UTF-8
  EXPECT_EQ(back.as_object().begin()->key(), "k" + fffd);
  EXPECT_EQ(std::string(back.as_object().begin()->value().as_string()),
            std::string(5000, 'x') + fffd + std::string(100, 'y'));
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

TEST(JsonWrite, ManySmallPiecesAcrossTheStagingBufferMatchBoostSerialize) {
  // Pieces are gathered in a small buffer before they reach the string: strings, keys and numbers
  // of every length from 0 to past that buffer, plain and escaped, so that some piece straddles
  // each of its flush points.
  json::array pieces;
  json::object keyed;
  for (int n = 0; n < 600; n += 7) {
    std::string plain(static_cast<size_t>(n), 'k');
    std::string escaped = plain + "\"\n";
    pieces.emplace_back(plain);
    pieces.emplace_back(escaped);
    pieces.emplace_back(static_cast<int64_t>(-1) * n * 1000003);
    pieces.emplace_back(static_cast<uint64_t>(18446744073709551615ULL) - n);
    pieces.emplace_back(n % 2 == 0);
    pieces.emplace_back(nullptr);
    keyed[plain + std::to_string(n)] = n;
    keyed[escaped + std::to_string(n)] = json::array{plain, json::object{{escaped, plain}}};
  }
  json::value v = json::object{{"pieces", pieces}, {"keyed", keyed}};
  std::string prefix = "already here,";
  std::string out = prefix;
  AppendJson(out, v);
  EXPECT_EQ(out, prefix + json::serialize(v));
}

TEST(JsonObjectWriter, WritesWhatAppendJsonWritesForTheSameObject) {
  std::string out = "prefix:";
  JsonObjectWriter w(out);
  w.Null("n");
  w.Bool("t", true);
  w.Int("i", -42);
  w.Uint("u", UINT64_MAX);
  w.Double("d", 0.25);
  w.String("s", "a\"b\n\xff");
  w.OptionalUint("ou", std::nullopt);
  w.OptionalDouble("od", 1.5);
  w.OptionalString("os", std::string("x"));
  const std::string long_key(100, 'k');  // past the writer's staging buffer for keys
  w.Int(long_key, 7);
  {
    JsonObjectWriter inner(w.Key("obj"));
    inner.Raw("raw", "[1,2]");
    inner.Close();
  }
  w.Key("empty");
  JsonObjectWriter(out).Close();
  w.Close();
  json::object expected;  // members in the order written
  expected["n"] = nullptr;
  expected["t"] = true;
  expected["i"] = -42;
  expected["u"] = UINT64_MAX;
  expected["d"] = 0.25;
  expected["s"] = "a\"b\n\xff";
  expected["ou"] = nullptr;
  expected["od"] = 1.5;
  expected["os"] = "x";
  expected[long_key] = 7;
  expected["obj"] = json::object{{"raw", json::array{1, 2}}};
  expected["empty"] = json::object{};
  std::string want = "prefix:";
  AppendJson(want, expected);
  EXPECT_EQ(out, want);
}

}  // namespace
}  // namespace kvm
