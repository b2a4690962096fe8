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
