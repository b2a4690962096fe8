// Serializes a Boost.JSON value into a string: the same text json::serialize gives, except that
// long strings that need no escaping (base64 file data) are copied in one piece (Boost's
// serializer inspects them byte by byte, which was the largest cost of a file_read reply) and
// doubles are written the way people read them (42570.27, 1.24; Boost writes 4.257027E4, 1.24E0),
// and bytes that are not valid UTF-8 become U+FFFD (Boost would copy them into the text as is).
#pragma once

#include <boost/json/value.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvm {

// Appends `value` as compact JSON to `out`.
void AppendJson(std::string& out, const boost::json::value& value);

// Appends `d` as the shortest decimal that reads back as the same double, laid out as
// JavaScript prints numbers: plain for 1e-7 < |d| < 1e21 (42570.27, 0.000123), an exponent
// otherwise (1e+300, 1.5e-7); integral values keep ".0" so they read back as doubles (3.0).
// Infinities and NaN, which JSON cannot hold, are written as json::serialize writes them.
void AppendDouble(std::string& out, double d);

// AppendDouble's general route (the shortest-digits search, always), which it skips for short
// decimals such as 0.25 or 42570.27; exposed so tests can hold the fast route to it.
void AppendShortestDouble(std::string& out, double d);

// Appends `text` as a quoted JSON string. Bytes that are not valid UTF-8 (a file or process
// name from the system can hold any) are written as U+FFFD, so the output is always JSON.
void AppendJsonString(std::string& out, std::string_view text);

// True when `text` needs more than quotes: it holds a byte JSON requires to be escaped ('"',
// '\\', a control character) or a non-ASCII byte (to be checked for UTF-8). Scans 64 bytes per
// step with SSE2 where available (26 GB/s here; 6 GB/s word by word).
bool NeedsJsonEscape(std::string_view text);

// Writes one JSON object straight into a string, member by member, for a reply assembled from
// parts without building a DOM first (get_system_info: its cached parts are kept as text).
// Keys are written as given: they must be plain ASCII names that need no escaping.
class JsonObjectWriter {
 public:
  explicit JsonObjectWriter(std::string& out) : out_(out) { out_ += '{'; }
  JsonObjectWriter(const JsonObjectWriter&) = delete;
  JsonObjectWriter& operator=(const JsonObjectWriter&) = delete;

  // Starts a member; what follows (a nested writer, Raw text) is its value.
  std::string& Key(std::string_view key);
  void Null(std::string_view key) { Key(key) += "null"; }
  void Bool(std::string_view key, bool b) { Key(key) += b ? "true" : "false"; }
  void Int(std::string_view key, int64_t n);
  void Uint(std::string_view key, uint64_t n);
  void Double(std::string_view key, double d) { AppendDouble(Key(key), d); }
  void String(std::string_view key, std::string_view text) { AppendJsonString(Key(key), text); }
  void Raw(std::string_view key, std::string_view json_text) { Key(key) += json_text; }
  // null when empty.
  void OptionalUint(std::string_view key, const std::optional<uint64_t>& n);
  void OptionalDouble(std::string_view key, const std::optional<double>& d);
  void OptionalString(std::string_view key, const std::optional<std::string>& text);
  void Close() { out_ += '}'; }

 private:
  std::string& out_;
  bool first_ = true;
};

}  // namespace kvm
