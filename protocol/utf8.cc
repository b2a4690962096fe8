#include "protocol/utf8.h"

namespace kvm {

size_t ValidUtf8Prefix(std::string_view data, bool* truncated) {
  const auto* s = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  size_t i = 0;
  if (truncated != nullptr) *truncated = false;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // no overlongs
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
      return i;
    }
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= n) {
        if (truncated != nullptr) *truncated = true;
        return i;
      }
      unsigned char b = s[i + k];
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
    }
    i += len;
  }
  return i;
}

bool IsValidUtf8(std::string_view data) { return ValidUtf8Prefix(data) == data.size(); }

std::string ToValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (;;) {
    size_t valid = ValidUtf8Prefix(text);
    out.append(text.substr(0, valid));
    if (valid == text.size()) return out;
    out.append("\xEF\xBF\xBD");  // U+FFFD for the byte that cannot start a valid sequence
    text.remove_prefix(valid + 1);
  }
}

}  // namespace kvm
