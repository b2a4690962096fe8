#include "agent/handlers/exec/output_text.h"

#include <string>

#include "protocol/base64.h"
#include "protocol/utf8.h"

namespace kvm::exec {

size_t IncompleteUtf8Tail(std::string_view bytes) {
  // The last sequence starts at most 3 bytes back: held back when it is cut by the end yet
  // still valid so far (it can become a character once the rest arrives).
  for (size_t back = 1; back <= 3 && back <= bytes.size(); ++back) {
    unsigned char c = static_cast<unsigned char>(bytes[bytes.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    bool truncated = false;
    size_t valid = ValidUtf8Prefix(bytes.substr(bytes.size() - back), &truncated);
    return valid == 0 && truncated ? back : 0;
  }
  return 0;
}

namespace {
// Bytes of `text` once escaped for JSON: \u00XX for most control bytes (NUL is valid UTF-8).
size_t EscapedSize(std::string_view text) {
  size_t size = text.size();
  for (unsigned char c : text) {
    if (c == '"' || c == '\\' || c == '\n' || c == '\t' || c == '\r' || c == '\b' || c == '\f') {
      size += 1;
    } else if (c < 0x20) {
      size += 5;
    }
  }
  return size;
}
}  // namespace

void PutOutput(boost::json::object& out, std::string_view name, std::string_view bytes) {
  std::string encoding_key = std::string(name) + "_encoding";
  // Text unless escaping would more than double it: 4 MiB of NULs became a 24 MiB string
  // (50 MB reply, 108 MB agent RSS for one command); base64 is 4/3 whatever the bytes.
  if (IsValidUtf8(bytes) && EscapedSize(bytes) <= 2 * bytes.size()) {
    out[name] = bytes;
    out[encoding_key] = "utf-8";
  } else {
    out[name] = Base64Encode(bytes);
    out[encoding_key] = "base64";
  }
}

}  // namespace kvm::exec
