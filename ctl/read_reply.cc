#include "ctl/read_reply.h"

#include <boost/json/basic_parser_impl.hpp>

#include "protocol/base64.h"

namespace kvm {
namespace {
namespace json = boost::json;

// The handler of json::basic_parser: keeps the few fields of a file_read reply and ignores
// everything else. Depth 1 is the reply object, depth 2 the "result" object.
class ReadReplyHandler {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  ReadReplyHandler(ReadReply& reply, std::string& bytes) : reply_(reply), bytes_(bytes) {}

  bool complete() const {
    return have_id_ && have_data_ && have_size_ && have_eof_ && !error_ && !duplicate_;
  }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) { return Enter(); }
  bool on_array_end(std::size_t, json::error_code&) { return Leave(); }
  bool on_object_begin(json::error_code&) {
    if (depth_ == 1 && key1_ == "result") in_result_ = true;
    return Enter();
  }
  bool on_object_end(std::size_t, json::error_code&) {
    if (depth_ == 2) in_result_ = false;
    return Leave();
  }
  // n counts the key's characters so far: n == s.size() means a new key starts here.
  bool on_key_part(json::string_view s, std::size_t n, json::error_code&) {
    std::string& key = KeyAt();
    if (n == s.size()) key.clear();
    key.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t n, json::error_code& ec) {
    on_key_part(s, n, ec);
    const std::string& key = KeyAt();
    if (depth_ == 1 && key == "error") error_ = true;
    // A key that matters seen twice: a tree keeps one of them, so leave such a line to it.
    if (depth_ == 1) {
      Once(key, "id", seen_id_);
      Once(key, "result", seen_result_);
    } else if (depth_ == 2 && in_result_) {
      Once(key, "data", seen_data_);
      Once(key, "size", seen_size_);
      Once(key, "eof", seen_eof_);
    }
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t n, json::error_code&) {
    if (!IsData()) return true;
    if (n == s.size()) text_.clear();
    text_.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t n, json::error_code&) {
    if (!IsData()) return true;
    bool ok;
    if (n == s.size()) {  // in one piece, as the agent's base64 always is: no copy
      ok = Base64Decode(std::string_view(s.data(), s.size()), bytes_);
    } else {
      text_.append(s.data(), s.size());
      ok = Base64Decode(text_, bytes_);
    }
    have_data_ = ok;
    return ok;  // invalid base64 stops the parse: the general path reports it
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t i, json::string_view, json::error_code&) {
    return i >= 0 ? Unsigned(static_cast<uint64_t>(i)) : true;
  }
  bool on_uint64(uint64_t u, json::string_view, json::error_code&) { return Unsigned(u); }
  bool on_double(double, json::string_view, json::error_code&) { return true; }
  bool on_bool(bool b, json::error_code&) {
    if (depth_ == 2 && in_result_ && key2_ == "eof") {
      reply_.eof = b;
      have_eof_ = true;
    }
    return true;
  }
  bool on_null(json::error_code&) { return true; }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  bool Enter() {
    ++depth_;
    if (depth_ == 2) key2_.clear();
    return true;
  }
  bool Leave() {
    --depth_;
    return true;
  }
  // Keys deeper down land in key2_ too; harmless: values there are ignored, and the next value
  // at depth 2 comes after a key of its own.
  // Marks `key` seen if it is `name`; a second sighting marks the line a duplicate.
  void Once(const std::string& key, const char* name, bool& seen) {
    if (key != name) return;
    if (seen) duplicate_ = true;
    seen = true;
  }
  std::string& KeyAt() { return depth_ == 1 ? key1_ : key2_; }
  bool IsData() const { return depth_ == 2 && in_result_ && key2_ == "data"; }
  bool Unsigned(uint64_t u) {
    if (depth_ == 1 && key1_ == "id") {
      reply_.id = u;
      have_id_ = true;
    } else if (depth_ == 2 && in_result_ && key2_ == "size") {
      reply_.size = u;
      have_size_ = true;
    }
    return true;
  }

  ReadReply& reply_;
  std::string& bytes_;
  int depth_ = 0;
  bool in_result_ = false;
  std::string key1_, key2_;  // the current key at depth 1 and 2
  std::string text_;         // "data" when the parser hands it over in parts
  bool have_id_ = false, have_data_ = false, have_size_ = false, have_eof_ = false;
  bool error_ = false;
  bool seen_id_ = false, seen_result_ = false, seen_data_ = false, seen_size_ = false,
       seen_eof_ = false;
  bool duplicate_ = false;
};

}  // namespace

bool ParseReadReply(std::string_view line, ReadReply& reply, std::string& bytes) {
  json::basic_parser<ReadReplyHandler> parser(json::parse_options{}, reply, bytes);
  json::error_code ec;
  size_t used = parser.write_some(false, line.data(), line.size(), ec);
  if (ec || used != line.size()) return false;
  return parser.handler().complete();
}

}  // namespace kvm
