// SHA-256 (FIPS 180-4) through OpenSSL's libcrypto, linked statically: its hand-tuned code (SHA
// extensions, AVX2, SSSE3, chosen at run time) is the fastest this machine has, and the part used
// adds ~80 KB to the static agent.
#pragma once

#include <openssl/sha.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvm {

class Sha256 {
 public:
  Sha256() { Reset(); }

  void Reset();
  void Update(const void* data, size_t size);
  void Update(std::string_view bytes) { Update(bytes.data(), bytes.size()); }
  std::array<uint8_t, 32> Finish();  // the object must be Reset() before reuse
  std::string FinishHex();           // 64 lowercase hex digits

 private:
  // The low-level API, not EVP: EVP's provider machinery would add ~3.7 MB to the static agent.
  SHA256_CTX ctx_;
};

std::string Sha256Hex(std::string_view bytes);

}  // namespace kvm
