// libFuzzer: Base64Decode against a slow reference of the documented rules (length multiple of
// 4, standard alphabet, '=' only as one or two final padding characters), and Encode round trips.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "protocol/base64.h"

namespace {

int Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::optional<std::string> Reference(std::string_view text) {
  if (text.size() % 4) return std::nullopt;
  size_t pad = 0;
  while (pad < text.size() && pad < 3 && text[text.size() - 1 - pad] == '=') ++pad;
  if (pad > 2) return std::nullopt;
  std::string out;
  uint32_t bits = 0;
  int nbits = 0;
  for (size_t i = 0; i < text.size() - pad; ++i) {
    int v = Value(text[i]);
    if (v < 0) return std::nullopt;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out += static_cast<char>((bits >> nbits) & 0xff);
    }
  }
  return out;
}

[[noreturn]] void Fail(const char* why, std::string_view input) {
  std::fprintf(stderr, "fuzz_base64: %s (input %zu bytes: %.200s)\n", why, input.size(),
               std::string(input).c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string out;
  bool ok = kvm::Base64Decode(input, out);
  auto expected = Reference(input);
  if (ok != expected.has_value()) Fail(ok ? "accepted invalid base64" : "refused valid base64", input);
  if (ok && out != *expected) Fail("decoded bytes differ from the reference", input);

  std::string encoded = kvm::Base64Encode(input);
  std::string back;
  if (!kvm::Base64Decode(encoded, back) || back != input) Fail("encode/decode round trip", input);
  if (encoded.size() != (size + 2) / 3 * 4) Fail("encoded length", input);
  return 0;
}
