#include "agent/handlers/exec/output_text.h"

#include <string>

#include "protocol/base64.h"
#include "protocol/utf8.h"

namespace kvm::exec {
namespace {

// Length of the sequence a lead byte starts (0: not a lead byte).
size_t SequenceLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Whether bytes[i..i+len) is a complete, valid sequence (no overlongs, surrogates, > U+10FFFF).
bool ValidSequence(const unsigned char* s, size_t len) {
  for (size_t k = 1; k < len; ++k) {
    if ((s[k] & 0xC0) != 0x80) return false;
  }
  if (len == 3) {
    if (s[0] == 0xE0 && s[1] < 0xA0) return false;
    if (s[0] == 0xED && s[1] > 0x9F) return false;
  } else if (len == 4) {
    if (s[0] == 0xF0 && s[1] < 0x90) return false;
    if (s[0] == 0xF4 && s[1] > 0x8F) return false;
  }
  return true;
}

}  // namespace

bool IsValidUtf8(std::string_view bytes) { return kvm::IsValidUtf8(bytes); }

size_t IncompleteUtf8Tail(std::string_view bytes) {
  auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size();
  // Look back at most 3 bytes for the lead byte of the last sequence.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    unsigned char c = s[n - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking
    size_t len = SequenceLength(c);
    if (len <= back) return 0;  // complete (or invalid): nothing to hold back
    // A prefix is worth holding only if it can still become valid.
    unsigned char padded[4] = {c, 0x80, 0x80, 0x80};
    for (size_t k = 1; k < back; ++k) padded[k] = s[n - back + k];
    if (back >= 2 && !ValidSequence(padded, len)) return 0;
    return back;
  }
  return 0;
}

void PutOutput(boost::json::object& out, std::string_view name, std::string_view bytes) {
  std::string encoding_key = std::string(name) + "_encoding";
  if (IsValidUtf8(bytes)) {
    out[name] = bytes;
    out[encoding_key] = "utf-8";
  } else {
    out[name] = Base64Encode(bytes);
    out[encoding_key] = "base64";
  }
}

}  // namespace kvm::exec
