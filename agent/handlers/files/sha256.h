// SHA-256 (FIPS 180-4), small and self-contained so the static agent needs no crypto library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvm {

class Sha256 {
 public:
  // Uses the x86 SHA extensions when the CPU has them (about 10x faster), unless told not to.
  explicit Sha256(bool allow_hardware = true);
  static bool HardwareAvailable();
  bool using_hardware() const { return hardware_; }

  void Reset();
  void Update(const void* data, size_t size);
  void Update(std::string_view bytes) { Update(bytes.data(), bytes.size()); }
  std::array<uint8_t, 32> Finish();  // the object must be Reset() before reuse
  std::string FinishHex();           // 64 lowercase hex digits

 private:
  void Blocks(const uint8_t* p, size_t count);
  void BlocksPortable(const uint8_t* p, size_t count);

  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
  bool hardware_ = false;
};

std::string Sha256Hex(std::string_view bytes);

}  // namespace kvm
