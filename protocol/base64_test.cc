#include "protocol/base64.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace kvm
