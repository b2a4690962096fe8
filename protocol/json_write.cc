#include "protocol/json_write.h"

#include <boost/json/serialize.hpp>

#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "protocol/utf8.h"

namespace kvm {
namespace json = boost::json;
namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHighs = 0x8080808080808080ULL;

// Nonzero when some byte of `w` is below `n` (n <= 128); exact, no false positives.
constexpr uint64_t HasByteBelow(uint64_t w, uint8_t n) { return (w - kOnes * n) & ~w & kHighs; }
constexpr uint64_t HasZeroByte(uint64_t w) { return (w - kOnes) & ~w & kHighs; }

// Also any byte >= 0x80: non-ASCII text takes the careful path, where it is checked to be UTF-8.
bool WordNeedsEscape(uint64_t w) {
  return (HasByteBelow(w, 0x20) | HasZeroByte(w ^ (kOnes * '"')) | HasZeroByte(w ^ (kOnes * '\\')) |
          (w & kHighs)) != 0;
}

constexpr bool ByteNeedsEscape(unsigned char c) {
  return c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
}

constexpr std::array<bool, 256> kNeedsEscape = [] {
  std::array<bool, 256> table{};
  for (int c = 0; c < 256; ++c) table[c] = ByteNeedsEscape(static_cast<unsigned char>(c));
  return table;
}();

template <typename Int>
void AppendInteger(std::string& out, Int n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, end);
}

// Writes `d` when it is a decimal with at most three places and at most 15 significant digits
// (load averages, uptimes, MHz: most doubles this agent sends), from an integer instead of the
// shortest-digits search (~15x fewer instructions). Exact: a decimal of <= 15 significant digits
// is the only one of its length or shorter that reads back as its double (DBL_DIG is 15), so when
// n / 10^k reads back as |d| (IEEE division rounds correctly, as parsing does), n with k places is
// what the search would find, and the smallest such k has no trailing zero. False otherwise.
bool AppendShortDecimal(std::string& out, double d) {
  static constexpr uint64_t kScale[] = {1, 10, 100, 1000};
  double a = std::fabs(d);
  if (!(a >= 1e-3 && a < 1e14)) return false;  // also NaN and infinities
  for (int k = 0; k < 4; ++k) {
    double scale = static_cast<double>(kScale[k]);
    auto n = static_cast<uint64_t>(std::llround(a * scale));
    if (n >= 1000000000000000ULL) return false;  // 16 digits: not covered by DBL_DIG
    if (static_cast<double>(n) / scale != a) continue;
    if (std::signbit(d)) out += '-';
    AppendInteger(out, n / kScale[k]);
    out += '.';
    if (k == 0) {
      out += '0';
    } else {
      char frac[3];
      uint64_t f = n % kScale[k];
      for (int i = k - 1; i >= 0; --i, f /= 10) frac[i] = static_cast<char>('0' + f % 10);
      out.append(frac, static_cast<size_t>(k));
    }
    return true;
  }
  return false;
}

}  // namespace

void AppendDouble(std::string& out, double d) {
  if (AppendShortDecimal(out, d)) return;
  AppendShortestDouble(out, d);
}

void AppendShortestDouble(std::string& out, double d) {
  // Boost finds the shortest digits that read back as `d` (Ryu) and writes them as
  // "D.DDDE[-]X"; only the layout changes here. (std::to_chars would do it in one step but pulls
  // ~110 KB of tables into the static agent.)
  std::string boost_text = json::serialize(json::value(d));
  size_t e_pos = boost_text.find('E');
  if (!std::isfinite(d) || e_pos == std::string::npos) {  // JSON has no spelling for inf/NaN
    out += boost_text;
    return;
  }
  std::string_view mantissa = std::string_view(boost_text).substr(0, e_pos);
  int exponent = std::atoi(boost_text.c_str() + e_pos + 1);
  bool negative = !mantissa.empty() && mantissa[0] == '-';
  if (negative) mantissa.remove_prefix(1);
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  int n = static_cast<int>(digits.size());
  if (negative) out += '-';
  if (exponent >= 0 && exponent < 21) {  // plain, as JavaScript prints numbers: 42570.27, 3.0
    if (exponent >= n - 1) {
      out += digits;
      out.append(static_cast<size_t>(exponent - (n - 1)), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<size_t>(exponent) + 1);
      out += '.';
      out.append(digits, static_cast<size_t>(exponent) + 1);
    }
  } else if (exponent < 0 && exponent > -7) {  // 0.000123
    out += "0.";
    out.append(static_cast<size_t>(-exponent - 1), '0');
    out += digits;
  } else {  // 1e+300, 1.5e-7
    out += digits[0];
    if (n > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += exponent < 0 ? "e-" : "e+";
    AppendInteger(out, exponent < 0 ? -exponent : exponent);
  }
}

bool NeedsJsonEscape(std::string_view text) {
  const char* p = text.data();
  size_t n = text.size();
  size_t i = 0;
#if defined(__SSE2__)
  // 64 bytes per step with SSE2 (every x86-64 has it): a file_read reply scans 64 KiB of base64,
  // and this was ~5% of a download's agent CPU at 8 bytes per step.
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  const __m128i below_space = _mm_set1_epi8(0x1f);
  auto special = [&](const char* at) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
    // Unsigned v <= 0x1f exactly when min(v, 0x1f) == v. The movemask below also sees v's own
    // top bits: any byte >= 0x80.
    __m128i control = _mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v);
    return _mm_or_si128(_mm_or_si128(control, v),
                        _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
  };
  for (; i + 64 <= n; i += 64) {
    __m128i any = _mm_or_si128(_mm_or_si128(special(p + i), special(p + i + 16)),
                               _mm_or_si128(special(p + i + 32), special(p + i + 48)));
    if (_mm_movemask_epi8(any) != 0) return true;
  }
#endif
  // Eight bytes at a time; the compiler keeps the word in a register.
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (WordNeedsEscape(w)) return true;
  }
  for (; i < n; ++i) {
    if (ByteNeedsEscape(static_cast<unsigned char>(p[i]))) return true;
  }
  return false;
}

void AppendJsonString(std::string& out, std::string_view text) {
  if (NeedsJsonEscape(text)) {
    // JSON text must be UTF-8; names and text read from the system need not be.
    if (!IsValidUtf8(text)) {
      std::string valid = ToValidUtf8(text);
      out += json::serialize(json::string_view(valid.data(), valid.size()));
      return;
    }
    out += json::serialize(json::string_view(text.data(), text.size()));
    return;
  }
  // A long string (a file_read chunk) gets room for the rest of the message as well: the next
  // append would otherwise reallocate and copy the whole payload once more.
  size_t slack = text.size() >= 4096 ? 1024 : 0;
  out.reserve(out.size() + text.size() + 2 + slack);
  out += '"';
  out.append(text);
  out += '"';
}

namespace {

// Collects small pieces (punctuation, keys, numbers) in a stack buffer and hands them to the
// string in runs. std::string's bookkeeping on every '{', ',' and key, and a separate escape scan
// of each short key, cost get_system_info ~10K of its ~83K instructions per call (callgrind).
class BufferedOut {
 public:
  explicit BufferedOut(std::string& out) : out_(out) {}
  BufferedOut(const BufferedOut&) = delete;
  BufferedOut& operator=(const BufferedOut&) = delete;
  ~BufferedOut() { Flush(); }

  void Put(char c) {
    if (used_ == sizeof buf_) Flush();
    buf_[used_++] = c;
  }
  void Put(std::string_view text) {  // short literals only ("null", "true", "false")
    if (text.size() > sizeof buf_ - used_) Flush();
    std::memcpy(buf_ + used_, text.data(), text.size());
    used_ += text.size();
  }
  // Keys and short values, quoted: checked while copied, one pass and no call. False (and
  // nothing written) when `text` needs escaping.
  bool PutShortPlainString(std::string_view text) {
    if (sizeof buf_ - used_ < text.size() + 2) Flush();
    char* p = buf_ + used_;
    *p++ = '"';
    for (char c : text) {
      if (kNeedsEscape[static_cast<unsigned char>(c)]) return false;
      *p++ = c;
    }
    *p++ = '"';
    used_ = static_cast<size_t>(p - buf_);
    return true;
  }
  static constexpr size_t kShort = 64;
  template <typename Int>
  void PutInteger(Int n) {
    if (sizeof buf_ - used_ < 24) Flush();
    auto [end, ec] = std::to_chars(buf_ + used_, buf_ + sizeof buf_, n);
    used_ = static_cast<size_t>(end - buf_);
  }
  // For pieces written by other code (long or escaped strings, doubles).
  std::string& Direct() {
    Flush();
    return out_;
  }
  void Flush() {
    out_.append(buf_, used_);
    used_ = 0;
  }

 private:
  std::string& out_;
  size_t used_ = 0;
  char buf_[480];
};

void PutString(BufferedOut& out, std::string_view text) {
  if (text.size() <= BufferedOut::kShort && out.PutShortPlainString(text)) return;
  AppendJsonString(out.Direct(), text);  // long (file data: one piece) or needing escapes
}

void PutJson(BufferedOut& out, const json::value& value) {
  switch (value.kind()) {
    case json::kind::null:
      out.Put("null");
      return;
    case json::kind::bool_:
      out.Put(value.get_bool() ? std::string_view("true") : std::string_view("false"));
      return;
    case json::kind::int64:
      out.PutInteger(value.get_int64());
      return;
    case json::kind::uint64:
      out.PutInteger(value.get_uint64());
      return;
    case json::kind::double_:
      AppendDouble(out.Direct(), value.get_double());
      return;
    case json::kind::string:
      PutString(out, value.get_string());
      return;
    case json::kind::array: {
      out.Put('[');
      bool first = true;
      for (const json::value& element : value.get_array()) {
        if (!first) out.Put(',');
        first = false;
        PutJson(out, element);
      }
      out.Put(']');
      return;
    }
    case json::kind::object: {
      out.Put('{');
      bool first = true;
      for (const auto& [key, member] : value.get_object()) {
        if (!first) out.Put(',');
        first = false;
        PutString(out, key);
        out.Put(':');
        PutJson(out, member);
      }
      out.Put('}');
      return;
    }
  }
}

}  // namespace

void AppendJson(std::string& out, const json::value& value) {
  BufferedOut buffered(out);
  PutJson(buffered, value);
}

std::string& JsonObjectWriter::Key(std::string_view key) {
  // One append per key: four would each check the capacity (keys are short names).
  char buf[64];
  if (key.size() + 4 > sizeof buf) {
    out_ += first_ ? "\"" : ",\"";
    out_ += key;
    out_ += "\":";
  } else {
    size_t n = 0;
    if (!first_) buf[n++] = ',';
    buf[n++] = '"';
    std::memcpy(buf + n, key.data(), key.size());
    n += key.size();
    buf[n++] = '"';
    buf[n++] = ':';
    out_.append(buf, n);
  }
  first_ = false;
  return out_;
}

void JsonObjectWriter::Int(std::string_view key, int64_t n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  Key(key).append(buf, static_cast<size_t>(end - buf));
}

void JsonObjectWriter::Uint(std::string_view key, uint64_t n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  Key(key).append(buf, static_cast<size_t>(end - buf));
}

void JsonObjectWriter::OptionalUint(std::string_view key, const std::optional<uint64_t>& n) {
  if (n) {
    Uint(key, *n);
  } else {
    Null(key);
  }
}

void JsonObjectWriter::OptionalDouble(std::string_view key, const std::optional<double>& d) {
  if (d) {
    Double(key, *d);
  } else {
    Null(key);
  }
}

void JsonObjectWriter::OptionalString(std::string_view key,
                                      const std::optional<std::string>& text) {
  if (text) {
    String(key, *text);
  } else {
    Null(key);
  }
}

}  // namespace kvm
