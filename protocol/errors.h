// JSON-RPC error codes and the exception that carries them out of a handler.
#pragma once

#include <boost/json/object.hpp>

#include <stdexcept>
#include <string>
#include <string_view>

namespace kvm {

// Standard JSON-RPC 2.0 codes, then this agent's application codes (documented in PROTOCOL.md).
enum class ErrorCode : int {
  kParseError = -32700,
  kInvalidRequest = -32600,
  kMethodNotFound = -32601,
  kInvalidParams = -32602,
  kInternalError = -32603,
  kPermissionDenied = -32000,
  kNotFound = -32001,
  kTooLarge = -32002,
  kTimeout = -32003,
  kBusy = -32004,
  kIoError = -32005,
  kUnsupported = -32006,
  kAlreadyExists = -32007,
  kConflict = -32008,
  kShuttingDown = -32009,
};

// Machine-readable name of a code, e.g. "permission_denied"; always sent as data.kind.
std::string_view ErrorKind(ErrorCode code);

// Thrown by handlers (and the dispatcher) to answer a request with an error.
// `data` gets a "kind" member added when the error is serialized.
class RpcError : public std::runtime_error {
 public:
  RpcError(ErrorCode code, std::string message, boost::json::object data = {})
      : std::runtime_error(message),
        code_(code),
        message_(std::move(message)),
        data_(std::move(data)) {}

  ErrorCode code() const { return code_; }
  // The whole text; what() stops at a NUL that a quoted name may hold ("no\u0000pe").
  const std::string& message() const { return message_; }
  const boost::json::object& data() const { return data_; }

 private:
  ErrorCode code_;
  std::string message_;
  boost::json::object data_;
};

}  // namespace kvm
