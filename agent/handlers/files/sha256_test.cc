#include "agent/handlers/files/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace kvm {
namespace {

// FIPS 180-4 / NIST example vectors.
TEST(Sha256, MatchesNistVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                      "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256, MillionAsFedInOddPieces) {
  Sha256 h;
  std::string piece(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    size_t n = std::min(left, piece.size());
    h.Update(piece.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.FinishHex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundariesAgreeWithOneShot) {
  // Lengths around the 55/56/64-byte padding edges, hashed whole and byte by byte.
  for (size_t len : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u}) {
    std::string data(len, 'x');
    Sha256 bytewise;
    for (char c : data) bytewise.Update(&c, 1);
    EXPECT_EQ(bytewise.FinishHex(), Sha256Hex(data)) << len;
  }
  EXPECT_EQ(Sha256Hex(std::string(64, 'a')),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, LargeInputFedWholeAndInChunksAgree) {
  // Long enough for libcrypto's multi-block paths; the chunked feed crosses block edges.
  std::string data;
  uint32_t x = 12345;
  for (int i = 0; i < 100000; ++i) {
    x = x * 1103515245 + 12345;
    data += static_cast<char>(x >> 16);
  }
  std::string whole = Sha256Hex(data);
  Sha256 chunked;
  for (size_t off = 0; off < data.size(); off += 4097) {
    chunked.Update(std::string_view(data).substr(off, 4097));
  }
  EXPECT_EQ(chunked.FinishHex(), whole);
  EXPECT_NE(whole, Sha256Hex(data.substr(1)));
}

TEST(Sha256, ResetStartsAFreshDigest) {
  Sha256 h;
  h.Update("garbage");
  h.Reset();
  h.Update("abc");
  EXPECT_EQ(h.FinishHex(), Sha256Hex("abc"));
}

}  // namespace
}  // namespace kvm
