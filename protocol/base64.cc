#include "protocol/base64.h"

#include <array>
#include <cstdint>
#include <cstring>

namespace kvm {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Two alphabet characters per 12 bits of input, first character in the low byte (as memcpy'd
// to memory on little-endian x86): encoding does one lookup per two output characters.
constexpr std::array<uint16_t, 4096> MakePairTable() {
  std::array<uint16_t, 4096> table{};
  for (int i = 0; i < 4096; ++i) {
    table[i] = static_cast<uint16_t>(static_cast<uint8_t>(kAlphabet[i >> 6]) |
                                     (static_cast<uint8_t>(kAlphabet[i & 63]) << 8));
  }
  return table;
}
constexpr auto kPair = MakePairTable();

// One table per position in a 4-character group, holding the character's 6 bits already shifted
// into place, so a group decodes with four lookups and three ORs. Characters outside the
// alphabet map to kBad, which no valid sum can contain.
constexpr uint32_t kBad = 1u << 24;
constexpr std::array<uint32_t, 256> MakeDecodeTable(int shift) {
  std::array<uint32_t, 256> table{};
  for (auto& entry : table) entry = kBad;
  for (int i = 0; i < 64; ++i) {
    table[static_cast<uint8_t>(kAlphabet[i])] = static_cast<uint32_t>(i) << shift;
  }
  return table;
}
constexpr auto kDecode0 = MakeDecodeTable(18);
constexpr auto kDecode1 = MakeDecodeTable(12);
constexpr auto kDecode2 = MakeDecodeTable(6);
constexpr auto kDecode3 = MakeDecodeTable(0);

}  // namespace

void Base64Append(std::string& out, std::string_view bytes) {
  size_t start = out.size();
  out.resize(start + Base64EncodedSize(bytes.size()));
  Base64EncodeTo(out.data() + start, bytes);
}

void Base64EncodeTo(char* dst, std::string_view bytes) {
  const auto* src = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t n = bytes.size();
  size_t i = 0;
  // Six input bytes (read as eight) become eight characters in one store.
  for (; i + 8 <= n; i += 6) {
    uint64_t w;
    std::memcpy(&w, src + i, 8);
    uint64_t v = __builtin_bswap64(w) >> 16;  // the six bytes, first one highest
    uint64_t out = uint64_t{kPair[(v >> 36) & 0xFFF]} | uint64_t{kPair[(v >> 24) & 0xFFF]} << 16 |
                   uint64_t{kPair[(v >> 12) & 0xFFF]} << 32 | uint64_t{kPair[v & 0xFFF]} << 48;
    std::memcpy(dst, &out, 8);
    dst += 8;
  }
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t{src[i]} << 16) | (uint32_t{src[i + 1]} << 8) | src[i + 2];
    *dst++ = kAlphabet[v >> 18];
    *dst++ = kAlphabet[(v >> 12) & 63];
    *dst++ = kAlphabet[(v >> 6) & 63];
    *dst++ = kAlphabet[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = uint32_t{src[i]} << 16;
    *dst++ = kAlphabet[v >> 18];
    *dst++ = kAlphabet[(v >> 12) & 63];
    *dst++ = '=';
    *dst++ = '=';
  } else if (n - i == 2) {
    uint32_t v = (uint32_t{src[i]} << 16) | (uint32_t{src[i + 1]} << 8);
    *dst++ = kAlphabet[v >> 18];
    *dst++ = kAlphabet[(v >> 12) & 63];
    *dst++ = kAlphabet[(v >> 6) & 63];
    *dst++ = '=';
  }
}

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  Base64Append(out, bytes);
  return out;
}

bool Base64Decode(std::string_view text, std::string& out) {
  out.clear();
  if (text.size() % 4 != 0) return false;
  if (text.empty()) return true;
  size_t pad = 0;
  if (text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  out.resize(text.size() / 4 * 3 - pad);
  const auto* src = reinterpret_cast<const uint8_t*>(text.data());
  char* dst = out.data();
  size_t full = text.size() - (pad ? 4 : 0);
  uint32_t seen = 0;  // ORed sums: kBad shows up if any character was outside the alphabet
  for (size_t i = 0; i < full; i += 4) {
    uint32_t v =
        kDecode0[src[i]] | kDecode1[src[i + 1]] | kDecode2[src[i + 2]] | kDecode3[src[i + 3]];
    seen |= v;
    dst[0] = static_cast<char>(v >> 16);
    dst[1] = static_cast<char>(v >> 8);
    dst[2] = static_cast<char>(v);
    dst += 3;
  }
  if (seen & kBad) return false;
  if (pad) {
    size_t i = text.size() - 4;
    uint32_t v = kDecode0[src[i]] | kDecode1[src[i + 1]];
    if (pad == 1) v |= kDecode2[src[i + 2]];
    if (v & kBad) return false;
    *dst++ = static_cast<char>(v >> 16);
    if (pad == 1) *dst++ = static_cast<char>(v >> 8);
  }
  return true;
}

}  // namespace kvm
