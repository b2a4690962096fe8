#include "protocol/errors.h"

namespace kvm {

std::string_view ErrorKind(ErrorCode code) {
  switch (code) {
    case ErrorCode::kParseError:
      return "parse_error";
    case ErrorCode::kInvalidRequest:
      return "invalid_request";
    case ErrorCode::kMethodNotFound:
      return "method_not_found";
    case ErrorCode::kInvalidParams:
      return "invalid_params";
    case ErrorCode::kInternalError:
      return "internal_error";
    case ErrorCode::kPermissionDenied:
      return "permission_denied";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kTooLarge:
      return "too_large";
    case ErrorCode::kTimeout:
      return "timeout";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kIoError:
      return "io_error";
    case ErrorCode::kUnsupported:
      return "unsupported";
    case ErrorCode::kAlreadyExists:
      return "already_exists";
    case ErrorCode::kConflict:
      return "conflict";
    case ErrorCode::kShuttingDown:
      return "shutting_down";
  }
  return "unknown";
}

}  // namespace kvm
