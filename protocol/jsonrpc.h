// JSON-RPC 2.0 message rules: parsing a line, validating a request, writing responses.
#pragma once

#include <boost/json/value.hpp>

#include <string>
#include <string_view>
#include <variant>

#include "protocol/errors.h"

namespace kvm::jsonrpc {

// Deepest nesting accepted in a message; deeper input is a parse error, not a stack overflow.
inline constexpr std::size_t kMaxDepth = 64;
// An error reply's message is cut to this many bytes (at a character boundary, then "...").
inline constexpr std::size_t kMaxErrorMessage = 512;

// Parses one line as a JSON text. Throws RpcError(kParseError) with the reason on failure
// (bad syntax, invalid UTF-8, nesting deeper than kMaxDepth, trailing garbage). The value is
// allocated from `storage` (the heap by default).
boost::json::value ParseLine(std::string_view line, boost::json::storage_ptr storage = {});

// A request object that passed validation. `id` is null for a notification (has_id false).
struct Request {
  std::string method;
  boost::json::object params;  // empty when absent; uses the parsed message's storage
  boost::json::value id;
  bool has_id = false;
  bool is_notification() const { return !has_id; }
};

// The error to send when a request object is malformed (id is null when it cannot be told).
struct InvalidRequest {
  boost::json::value id;
  RpcError error;
};

// Validates one element: an object with "jsonrpc":"2.0", a string "method", optional
// object "params" (positional arrays are refused by this agent), optional id of type
// string/number/null. Unknown top-level members are refused.
std::variant<Request, InvalidRequest> ValidateRequest(boost::json::value&& message);

// Serialized response lines (no trailing newline).
std::string ResultResponse(const boost::json::value& id, const boost::json::value& result);
// The same line built in two steps around a result serialized by its method
// (RequestContext::result_text): the head, then the result's JSON, then the tail.
std::string_view ResultResponseHead();
void FinishResultResponse(std::string& out, const boost::json::value& id);
std::string ErrorResponse(const boost::json::value& id, const RpcError& error);

// Writes an id as JSON; numbers keep their integer digits exactly, doubles use the shortest
// form that reads back to the same value.
void AppendId(std::string& out, const boost::json::value& id);

}  // namespace kvm::jsonrpc
