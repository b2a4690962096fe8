// Reads a file_read reply without building a JSON tree for it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvm {

// What a successful file_read reply carries, with "data" already base64-decoded.
struct ReadReply {
  uint64_t id = 0;
  uint64_t size = 0;  // of the whole file
  bool eof = false;
};

// Parses `line` as {"jsonrpc":..., "id":N, "result":{"data":"<base64>", "size":N, "eof":B, ...}}
// with Boost.JSON's SAX parser and decodes "data" straight from the line into `bytes`, where a
// tree would first copy 64 KiB of base64 into a json::string. False for anything else (an
// error reply, another method's result, invalid JSON or base64, a missing field): the caller
// then reads the line the general way. `bytes` is unspecified after false.
bool ParseReadReply(std::string_view line, ReadReply& reply, std::string& bytes);

}  // namespace kvm
