// RFC 4648 base64 (standard alphabet, with padding) for binary payloads inside JSON strings.
#pragma once

#include <string>
#include <string_view>

namespace kvm {

// Appends the encoding of `bytes` to `out`.
void Base64Append(std::string& out, std::string_view bytes);
// Writes the encoding of `bytes` to dst, which must hold Base64EncodedSize(bytes.size()) chars.
void Base64EncodeTo(char* dst, std::string_view bytes);
constexpr size_t Base64EncodedSize(size_t n) { return (n + 2) / 3 * 4; }
std::string Base64Encode(std::string_view bytes);

// Strict decoding: length a multiple of 4, '=' only as final padding, no whitespace.
// Returns false on invalid input; `out` is then unspecified.
bool Base64Decode(std::string_view text, std::string& out);

}  // namespace kvm
