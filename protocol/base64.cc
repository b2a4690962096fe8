#include "protocol/base64.h"

#include <array>
#include <cstdint>

namespace kvm {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// 0..63 for alphabet characters, 0xFF for everything else.
constexpr std::array<uint8_t, 256> MakeDecodeTable() {
  std::array<uint8_t, 256> table{};
  for (auto& entry : table) entry = 0xFF;
  for (int i = 0; i < 64; ++i) table[static_cast<uint8_t>(kAlphabet[i])] = static_cast<uint8_t>(i);
  return table;
}
constexpr auto kDecode = MakeDecodeTable();

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
  size_t full = (text.size() - (pad ? 4 : 0));
  for (size_t i = 0; i < full; i += 4) {
    uint32_t a = kDecode[src[i]], b = kDecode[src[i + 1]], c = kDecode[src[i + 2]],
             d = kDecode[src[i + 3]];
    if ((a | b | c | d) & 0x80) return false;
    uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
    *dst++ = static_cast<char>(v >> 16);
    *dst++ = static_cast<char>(v >> 8);
    *dst++ = static_cast<char>(v);
  }
  if (pad) {
    size_t i = text.size() - 4;
    uint32_t a = kDecode[src[i]], b = kDecode[src[i + 1]];
    if ((a | b) & 0x80) return false;
    if (pad == 2) {
      *dst++ = static_cast<char>((a << 2) | (b >> 4));
    } else {
      uint32_t c = kDecode[src[i + 2]];
      if (c & 0x80) return false;
      uint32_t v = (a << 18) | (b << 12) | (c << 6);
      *dst++ = static_cast<char>(v >> 16);
      *dst++ = static_cast<char>(v >> 8);
    }
  }
  return true;
}

}  // namespace kvm
