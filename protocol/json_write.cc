#include "protocol/json_write.h"

#include <boost/json/serialize.hpp>

#include <charconv>
#include <cstdint>
#include <cstring>

namespace kvm {
namespace json = boost::json;
namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHighs = 0x8080808080808080ULL;

// Nonzero when some byte of `w` is below `n` (n <= 128); exact, no false positives.
constexpr uint64_t HasByteBelow(uint64_t w, uint8_t n) { return (w - kOnes * n) & ~w & kHighs; }
constexpr uint64_t HasZeroByte(uint64_t w) { return (w - kOnes) & ~w & kHighs; }

bool WordNeedsEscape(uint64_t w) {
  return (HasByteBelow(w, 0x20) | HasZeroByte(w ^ (kOnes * '"')) |
          HasZeroByte(w ^ (kOnes * '\\'))) != 0;
}

bool ByteNeedsEscape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

template <typename Int>
void AppendInteger(std::string& out, Int n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, end);
}

}  // namespace

bool NeedsJsonEscape(std::string_view text) {
  const char* p = text.data();
  size_t n = text.size();
  size_t i = 0;
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
    out += json::serialize(json::string_view(text.data(), text.size()));
    return;
  }
  out.reserve(out.size() + text.size() + 2);
  out += '"';
  out.append(text);
  out += '"';
}

void AppendJson(std::string& out, const json::value& value) {
  switch (value.kind()) {
    case json::kind::null:
      out += "null";
      return;
    case json::kind::bool_:
      out += value.get_bool() ? "true" : "false";
      return;
    case json::kind::int64:
      AppendInteger(out, value.get_int64());
      return;
    case json::kind::uint64:
      AppendInteger(out, value.get_uint64());
      return;
    case json::kind::double_:
      out += json::serialize(value);  // Boost's shortest round-trip form, as before
      return;
    case json::kind::string:
      AppendJsonString(out, value.get_string());
      return;
    case json::kind::array: {
      out += '[';
      bool first = true;
      for (const json::value& element : value.get_array()) {
        if (!first) out += ',';
        first = false;
        AppendJson(out, element);
      }
      out += ']';
      return;
    }
    case json::kind::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.get_object()) {
        if (!first) out += ',';
        first = false;
        AppendJsonString(out, key);
        out += ':';
        AppendJson(out, member);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace kvm
