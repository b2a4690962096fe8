#include "agent/handlers/files/sha256.h"

namespace kvm {

void Sha256::Reset() { SHA256_Init(&ctx_); }

void Sha256::Update(const void* data, size_t size) { SHA256_Update(&ctx_, data, size); }

std::array<uint8_t, 32> Sha256::Finish() {
  std::array<uint8_t, 32> out;
  SHA256_Final(out.data(), &ctx_);
  return out;
}

std::string Sha256::FinishHex() {
  static constexpr char kHex[] = "0123456789abcdef";
  auto digest = Finish();
  std::string hex(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    hex[2 * i] = kHex[digest[i] >> 4];
    hex[2 * i + 1] = kHex[digest[i] & 15];
  }
  return hex;
}

std::string Sha256Hex(std::string_view bytes) {
  Sha256 h;
  h.Update(bytes);
  return h.FinishHex();
}

}  // namespace kvm
