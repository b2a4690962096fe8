// libFuzzer: kvmmanager-ctl's SAX reading of file_read replies (ctl/read_reply.h) against a
// Boost.JSON tree of the same line. Whenever the fast path accepts a line, the tree must hold
// the same id, size, eof and base64-decoded data; refusing is always allowed (the ctl then
// reads the line through the tree).
#include <boost/json.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "ctl/read_reply.h"
#include "protocol/base64.h"

namespace {
namespace json = boost::json;

[[noreturn]] void Fail(const char* why, std::string_view input) {
  std::fprintf(stderr, "fuzz_read_reply: %s (input %zu bytes: %.300s)\n", why, input.size(),
               std::string(input).c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  kvm::ReadReply reply;
  std::string bytes;
  if (!kvm::ParseReadReply(line, reply, bytes)) return 0;

  json::error_code ec;
  json::value tree = json::parse(line, ec);
  if (ec || !tree.is_object()) Fail("accepted a line the tree parser refuses", line);
  const json::object& o = tree.get_object();
  if (o.contains("error")) Fail("accepted an error reply", line);
  const json::value* id = o.if_contains("id");
  json::error_code nec;
  if (id == nullptr || !id->is_number() || id->to_number<uint64_t>(nec) != reply.id || nec) {
    Fail("id differs from the tree's", line);
  }
  const json::value* result = o.if_contains("result");
  if (result == nullptr || !result->is_object())
    Fail("accepted a reply without a result object", line);
  const json::object& r = result->get_object();
  const json::value* d = r.if_contains("data");
  std::string expected;
  if (d == nullptr || !d->is_string() || !kvm::Base64Decode(d->get_string(), expected) ||
      expected != bytes) {
    Fail("data differs from the tree's", line);
  }
  const json::value* s = r.if_contains("size");
  if (s == nullptr || !s->is_number() || s->to_number<uint64_t>(nec) != reply.size || nec) {
    Fail("size differs from the tree's", line);
  }
  const json::value* e = r.if_contains("eof");
  if (e == nullptr || !e->is_bool() || e->get_bool() != reply.eof) Fail("eof differs", line);
  return 0;
}
