#include "protocol/base64.h"

#include <array>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvm {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Two alphabet characters per 12 bits of input, first character in the low byte (as memcpy'd
// to memory on little-endian x86): encoding does one lookup per two output characters.
constexpr std::array<uint16_t, 4096> MakePairTable() {
  std::array<uint16_t, 4096> table{};
  for (int i = 0; i < 4096; ++i) {
    table[i] = static_cast<uint16_t>(static_cast<uint8_t>(kAlphabet[i >> 6]) |
                                     (static_cast<uint8_t>(kAlphabet[i & 63]) << 8));
  }
  return table;
}
constexpr auto kPair = MakePairTable();

// One table per position in a 4-character group, holding the character's 6 bits already shifted
// into place, so a group decodes with four lookups and three ORs. Characters outside the
// alphabet map to kBad, which no valid sum can contain.
constexpr uint32_t kBad = 1u << 24;
constexpr std::array<uint32_t, 256> MakeDecodeTable(int shift) {
  std::array<uint32_t, 256> table{};
  for (auto& entry : table) entry = kBad;
  for (int i = 0; i < 64; ++i) {
    table[static_cast<uint8_t>(kAlphabet[i])] = static_cast<uint32_t>(i) << shift;
  }
  return table;
}
constexpr auto kDecode0 = MakeDecodeTable(18);
constexpr auto kDecode1 = MakeDecodeTable(12);
constexpr auto kDecode2 = MakeDecodeTable(6);
constexpr auto kDecode3 = MakeDecodeTable(0);

#if defined(__x86_64__)
// SSSE3 paths, 12 bytes <-> 16 characters per step, chosen at run time (the static agent runs on
// any x86-64; TCG's default CPU has no SSSE3). About 3x the table code on a 64 KiB chunk.
bool CpuHasSsse3() {
  static const bool has = __builtin_cpu_supports("ssse3");
  return has;
}

// Encodes whole 12-byte steps while 16 bytes can be loaded; returns the bytes consumed.
__attribute__((target("ssse3"))) size_t EncodeSsse3(char* dst, const uint8_t* src, size_t n) {
  // Each 32-bit lane gets one 3-byte group as [s1 s0 s2 s1]: its low 16 bits are s0:s1 and its
  // high 16 bits s1:s2, so every 6-bit field sits inside one 16-bit half.
  const __m128i spread = _mm_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10);
  size_t i = 0;
  for (; i + 16 <= n; i += 12, dst += 16) {
    __m128i in =
        _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)), spread);
    // Fields 1 and 3 (bits 15-10 of s0:s1, bits 11-6 of s1:s2) moved down to bytes 0 and 2 by
    // a high multiply; fields 2 and 4 (bits 9-4, bits 5-0) moved up to bytes 1 and 3.
    __m128i hi =
        _mm_mulhi_epu16(_mm_and_si128(in, _mm_set1_epi32(0x0fc0fc00)), _mm_set1_epi32(0x04000040));
    __m128i lo =
        _mm_mullo_epi16(_mm_and_si128(in, _mm_set1_epi32(0x003f03f0)), _mm_set1_epi32(0x01000010));
    __m128i idx = _mm_or_si128(hi, lo);  // sixteen values 0..63, in output order
    // ASCII = index + offset: 'A'-0 for 0-25, 'a'-26 for 26-51, '0'-52 for 52-61, then '+', '/'.
    __m128i off = _mm_set1_epi8(65);
    off =
        _mm_add_epi8(off, _mm_and_si128(_mm_cmpgt_epi8(idx, _mm_set1_epi8(25)), _mm_set1_epi8(6)));
    off = _mm_add_epi8(off,
                       _mm_and_si128(_mm_cmpgt_epi8(idx, _mm_set1_epi8(51)), _mm_set1_epi8(-75)));
    off = _mm_add_epi8(off,
                       _mm_and_si128(_mm_cmpeq_epi8(idx, _mm_set1_epi8(62)), _mm_set1_epi8(-15)));
    off = _mm_add_epi8(off,
                       _mm_and_si128(_mm_cmpeq_epi8(idx, _mm_set1_epi8(63)), _mm_set1_epi8(-12)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_add_epi8(idx, off));
  }
  return i;
}

// Decodes whole 16-character steps of `count` characters (a multiple of 16); returns false if
// one was outside the alphabet.
__attribute__((target("ssse3"))) bool DecodeSsse3(char* dst, const uint8_t* src, size_t count) {
  // Signed compares are safe: bytes >= 0x80 are negative and fall outside every range.
  auto in_range = [](__m128i v, char lo, char hi) {
    return _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(static_cast<char>(lo - 1))),
                         _mm_cmpgt_epi8(_mm_set1_epi8(static_cast<char>(hi + 1)), v));
  };
  const __m128i gather = _mm_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
  for (size_t i = 0; i < count; i += 16, dst += 12) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m128i upper = in_range(v, 'A', 'Z'), lower = in_range(v, 'a', 'z');
    __m128i digit = in_range(v, '0', '9');
    __m128i plus = _mm_cmpeq_epi8(v, _mm_set1_epi8('+'));
    __m128i slash = _mm_cmpeq_epi8(v, _mm_set1_epi8('/'));
    __m128i valid = _mm_or_si128(_mm_or_si128(upper, lower), _mm_or_si128(digit, plus));
    valid = _mm_or_si128(valid, slash);
    if (_mm_movemask_epi8(valid) != 0xFFFF) return false;
    __m128i off = _mm_and_si128(upper, _mm_set1_epi8(-65));
    off = _mm_or_si128(off, _mm_and_si128(lower, _mm_set1_epi8(-71)));
    off = _mm_or_si128(off, _mm_and_si128(digit, _mm_set1_epi8(4)));
    off = _mm_or_si128(off, _mm_and_si128(plus, _mm_set1_epi8(19)));
    off = _mm_or_si128(off, _mm_and_si128(slash, _mm_set1_epi8(16)));
    __m128i six = _mm_add_epi8(v, off);  // sixteen 6-bit values
    // Pairs to 12 bits (a*64 + b), then pairs of those to 24 bits, one group per 32-bit lane.
    __m128i twelve = _mm_maddubs_epi16(six, _mm_set1_epi32(0x01400140));
    __m128i lanes = _mm_madd_epi16(twelve, _mm_set1_epi32(0x00011000));
    __m128i bytes = _mm_shuffle_epi8(lanes, gather);  // 12 output bytes, big-endian per group
    alignas(16) char tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), bytes);
    std::memcpy(dst, tmp, 12);
  }
  return true;
}

// AVX2 paths, 24 bytes <-> 32 characters per step (two 128-bit lanes of the SSSE3 layout).
// A 64 KiB chunk is decoded and encoded about twice as fast as with SSSE3 here.
bool CpuHasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// Encodes whole 24-byte steps while 28 bytes can be loaded; returns the bytes consumed.
__attribute__((target("avx2"))) size_t EncodeAvx2(char* dst, const uint8_t* src, size_t n) {
  const __m256i spread = _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, 1, 0,
                                          2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10);
  // ASCII offset by class of the index: 13 for 0-25 ('A'), 0 for 26-51 ('a' - 26), 1-10 for
  // 52-61 ('0' - 52), 11 for 62 ('+'), 12 for 63 ('/').
  const __m256i offsets =
      _mm256_setr_epi8(71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 65, 0, 0, 71, -4, -4,
                       -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 65, 0, 0);
  size_t i = 0;
  for (; i + 28 <= n; i += 24, dst += 32) {
    __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 12));
    __m256i in = _mm256_shuffle_epi8(
        _mm256_inserti128_si256(_mm256_castsi128_si256(first), second, 1), spread);
    __m256i hi = _mm256_mulhi_epu16(_mm256_and_si256(in, _mm256_set1_epi32(0x0fc0fc00)),
                                    _mm256_set1_epi32(0x04000040));
    __m256i lo = _mm256_mullo_epi16(_mm256_and_si256(in, _mm256_set1_epi32(0x003f03f0)),
                                    _mm256_set1_epi32(0x01000010));
    __m256i idx = _mm256_or_si256(hi, lo);
    __m256i cls = _mm256_subs_epu8(idx, _mm256_set1_epi8(51));
    __m256i below26 = _mm256_cmpgt_epi8(_mm256_set1_epi8(26), idx);
    cls = _mm256_or_si256(cls, _mm256_and_si256(below26, _mm256_set1_epi8(13)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_add_epi8(idx, _mm256_shuffle_epi8(offsets, cls)));
  }
  return i;
}

// Decodes `steps` 32-character steps. Each step stores 32 bytes of which 24 are output, so the
// caller leaves 8 bytes of room after the last. Returns false if a character was outside the
// alphabet.
__attribute__((target("avx2"))) bool DecodeAvx2(char* dst, const uint8_t* src, size_t steps) {
  // Validity by nibbles: each high nibble has one bit; lo_invalid[l] holds the bits of the
  // high nibbles h for which the character (h, l) is not in the alphabet. Bit 0x10 covers the
  // high nibbles with no valid character (0-1, 8-F), 0x01 '+' and '/' (2), 0x02 digits (3),
  // 0x04 upper halves 'A'-'O' and 'a'-'o' (4, 6), 0x08 'P'-'Z' and 'p'-'z' (5, 7).
  const __m256i lo_invalid =
      _mm256_setr_epi8(0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B,
                       0x1B, 0x1B, 0x1A, 0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                       0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A);
  const __m256i hi_bit =
      _mm256_setr_epi8(0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10,
                       0x10, 0x10, 0x10, 0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10,
                       0x10, 0x10, 0x10, 0x10, 0x10, 0x10);
  // Value = character + shift[high nibble], '/' moved from nibble 2 to 1 to tell it from '+'.
  const __m256i shift = _mm256_setr_epi8(0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i gather = _mm256_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1, 2,
                                          1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  for (size_t step = 0; step < steps; ++step, src += 32, dst += 24) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi32(v, 4), nibble);
    __m256i lo = _mm256_and_si256(v, nibble);
    if (!_mm256_testz_si256(_mm256_shuffle_epi8(lo_invalid, lo), _mm256_shuffle_epi8(hi_bit, hi))) {
      return false;
    }
    __m256i slash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8('/'));
    __m256i six = _mm256_add_epi8(v, _mm256_shuffle_epi8(shift, _mm256_add_epi8(hi, slash)));
    __m256i twelve = _mm256_maddubs_epi16(six, _mm256_set1_epi32(0x01400140));
    __m256i lanes = _mm256_madd_epi16(twelve, _mm256_set1_epi32(0x00011000));
    __m256i bytes = _mm256_shuffle_epi8(lanes, gather);  // 12 bytes at the start of each lane
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bytes);
  }
  return true;
}
#endif

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
#if defined(__x86_64__)
  if (CpuHasAvx2()) {
    i = EncodeAvx2(dst, src, n);
    dst += i / 3 * 4;
  }
  if (CpuHasSsse3()) {
    size_t done = EncodeSsse3(dst, src + i, n - i);
    i += done;
    dst += done / 3 * 4;
  }
#endif
  // Six input bytes (read as eight) become eight characters in one store.
  for (; i + 8 <= n; i += 6) {
    uint64_t w;
    std::memcpy(&w, src + i, 8);
    uint64_t v = __builtin_bswap64(w) >> 16;  // the six bytes, first one highest
    uint64_t out = uint64_t{kPair[(v >> 36) & 0xFFF]} | uint64_t{kPair[(v >> 24) & 0xFFF]} << 16 |
                   uint64_t{kPair[(v >> 12) & 0xFFF]} << 32 | uint64_t{kPair[v & 0xFFF]} << 48;
    std::memcpy(dst, &out, 8);
    dst += 8;
  }
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
  if (text.size() % 4 != 0) return false;
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  // Resized, not cleared first: a reused buffer of the same size is not zero-filled again.
  out.resize(text.size() / 4 * 3 - pad);
  if (text.empty()) return true;
  const auto* src = reinterpret_cast<const uint8_t*>(text.data());
  char* dst = out.data();
  size_t full = text.size() - (pad ? 4 : 0);
  size_t i = 0;
#if defined(__x86_64__)
  if (CpuHasAvx2() && full >= 48) {
    size_t steps = (full - 16) / 32;  // the last step's 8 spare bytes land on the next 12
    if (!DecodeAvx2(dst, src, steps)) return false;
    i = steps * 32;
    dst += steps * 24;
  }
  if (CpuHasSsse3()) {
    size_t vector = (full - i) / 16 * 16;
    if (!DecodeSsse3(dst, src + i, vector)) return false;
    i += vector;
    dst += vector / 4 * 3;
  }
#endif
  uint32_t seen = 0;  // ORed sums: kBad shows up if any character was outside the alphabet
  for (; i < full; i += 4) {
    uint32_t v =
        kDecode0[src[i]] | kDecode1[src[i + 1]] | kDecode2[src[i + 2]] | kDecode3[src[i + 3]];
    seen |= v;
    dst[0] = static_cast<char>(v >> 16);
    dst[1] = static_cast<char>(v >> 8);
    dst[2] = static_cast<char>(v);
    dst += 3;
  }
  if (seen & kBad) return false;
  if (pad) {
    size_t i = text.size() - 4;
    uint32_t v = kDecode0[src[i]] | kDecode1[src[i + 1]];
    if (pad == 1) v |= kDecode2[src[i + 2]];
    if (v & kBad) return false;
    *dst++ = static_cast<char>(v >> 16);
    if (pad == 1) *dst++ = static_cast<char>(v >> 8);
  }
  return true;
}

}  // namespace kvm
