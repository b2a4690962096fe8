#include "protocol/base64.h"

#include <gtest/gtest.h>

#include <cctype>
#include <random>

namespace kvm {
namespace {

TEST(Base64, EncodesRfc4648Vectors) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
  EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
}

TEST(Base64, RoundTripsRandomBinary) {
  std::mt19937 rng(42);
  for (size_t len = 0; len < 300; ++len) {
    std::string data(len, '\0');
    for (auto& ch : data) ch = static_cast<char>(rng());
    std::string decoded;
    ASSERT_TRUE(Base64Decode(Base64Encode(data), decoded)) << len;
    EXPECT_EQ(decoded, data);
  }
}

TEST(Base64, RejectsMalformedInput) {
  std::string out;
  for (const char* bad :
       {"Zg=", "Zg", "Z===", "Zm9v!", "Zm 9v", "Zg==Zg==", "=Zg=", "Zm9\n", "Zm=v"}) {
    EXPECT_FALSE(Base64Decode(bad, out)) << bad;
  }
  EXPECT_FALSE(Base64Decode(std::string("Zm9\0", 4), out));
}

// Bit by bit, the slow obvious way, to check the table-driven encoder against.
std::string ReferenceEncode(const std::string& data) {
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bits;
  for (unsigned char c : data)
    for (int b = 7; b >= 0; --b) bits += ((c >> b) & 1) ? '1' : '0';
  while (bits.size() % 6) bits += '0';
  std::string out;
  for (size_t i = 0; i < bits.size(); i += 6)
    out += alphabet[std::stoi(bits.substr(i, 6), nullptr, 2)];
  while (out.size() % 4) out += '=';
  return out;
}

TEST(Base64, EncoderMatchesBitByBitReferenceAtEveryLength) {
  std::mt19937 rng(7);
  for (size_t len = 0; len < 200; ++len) {
    std::string data(len, '\0');
    for (auto& ch : data) ch = static_cast<char>(rng());
    ASSERT_EQ(Base64Encode(data), ReferenceEncode(data)) << len;
  }
}

TEST(Base64, RejectsEveryNonAlphabetByteAtEveryPosition) {
  // 132 characters, no padding: with AVX2, 96 go through 32-character steps, 32 through
  // 16-character SSSE3 steps and the last 4 through the table code.
  std::string valid = Base64Encode(std::string(99, 'x'));
  std::string out;
  for (int byte = 0; byte < 256; ++byte) {
    bool in_alphabet = std::isalnum(byte) || byte == '+' || byte == '/';
    if (in_alphabet) continue;
    for (size_t pos = 0; pos < valid.size(); ++pos) {
      if (byte == '=' && pos == valid.size() - 1) continue;  // that is valid padding
      std::string bad = valid;
      bad[pos] = static_cast<char>(byte);
      ASSERT_FALSE(Base64Decode(bad, out)) << "byte " << byte << " at " << pos;
    }
  }
  ASSERT_TRUE(Base64Decode(valid, out));
  EXPECT_EQ(out, std::string(99, 'x'));
}

TEST(Base64, EveryAlphabetCharacterDecodesRightAtEveryPosition) {
  // The 64 characters rotated through every position of a 32- and a 16-character vector step
  // and of the 4-character groups after them; decoding then encoding must give the text back.
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t shift = 0; shift < 64; ++shift) {
    std::string rotated = alphabet.substr(shift) + alphabet.substr(0, shift);
    std::string text = rotated + rotated + "QUJD";
    std::string out;
    ASSERT_TRUE(Base64Decode(text, out)) << shift;
    EXPECT_EQ(Base64Encode(out), text) << shift;
    EXPECT_EQ(ReferenceEncode(out), text) << shift;
  }
}

}  // namespace
}  // namespace kvm
