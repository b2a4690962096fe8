#include "protocol/jsonrpc.h"

#include <boost/json/parser.hpp>
#include <boost/json/serialize.hpp>

#include "protocol/json_write.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace kvm::jsonrpc {
namespace json = boost::json;

json::value ParseLine(std::string_view line, json::storage_ptr storage) {
  json::parse_options options;
  options.max_depth = kMaxDepth;
  // The parser's working stack starts in this buffer, not on the heap: a short request then
  // costs no allocation beyond the value itself. (The constructor's storage is for that stack;
  // reset() names the result's.)
  unsigned char stack[512];
  json::parser parser(json::storage_ptr(), options, stack, sizeof stack);
  parser.reset(std::move(storage));
  json::error_code ec;
  parser.write(line.data(), line.size(), ec);
  if (ec) {
    std::string reason = ec.message();
    if (ec == json::error::too_deep) reason = "nesting deeper than " + std::to_string(kMaxDepth);
    throw RpcError(ErrorCode::kParseError, "Parse error: " + reason, {{"detail", reason}});
  }
  return parser.release();
}

namespace {

// A number literal past double range (1e999) parses as infinity, which has no JSON spelling:
// echoing it would make the reply unparseable, so such an id is refused like a bad type.
bool IsValidIdType(const json::value& id) {
  if (id.is_double()) return std::isfinite(id.get_double());
  return id.is_string() || id.is_number() || id.is_null();
}

InvalidRequest Invalid(json::value id, std::string why) {
  return InvalidRequest{std::move(id), RpcError(ErrorCode::kInvalidRequest,
                                                "Invalid Request: " + why, {{"detail", why}})};
}

}  // namespace

std::variant<Request, InvalidRequest> ValidateRequest(json::value&& message) {
  json::object* object = message.if_object();
  if (!object) return Invalid(nullptr, "a request must be a JSON object");

  // One pass over the members (this runs for every request); the checks below then keep their
  // order, so a bad id is reported before a bad "jsonrpc", and so on.
  json::value *id_member = nullptr, *version = nullptr, *method = nullptr, *params = nullptr;
  std::string_view unknown;
  bool unknown_first = false;  // before "params": reported first, as members are in key order
  for (auto& [key, value] : *object) {
    if (key == "id") {
      id_member = &value;
    } else if (key == "jsonrpc") {
      version = &value;
    } else if (key == "method") {
      method = &value;
    } else if (key == "params") {
      params = &value;
    } else if (unknown.empty()) {
      unknown = key;
      unknown_first = params == nullptr;
    }
  }
  json::value id = nullptr;
  if (id_member) {
    if (!IsValidIdType(*id_member))
      return Invalid(nullptr, "id must be a string, a finite number or null");
    id = *id_member;
  }
  if (!version || *version != "2.0") return Invalid(id, "\"jsonrpc\" must be exactly \"2.0\"");
  if (!method || !method->is_string()) return Invalid(id, "\"method\" must be a string");
  // params keep the message's storage, so moving them out below is a transfer, not a copy.
  Request request{std::string(method->get_string()), json::object(message.storage()), std::move(id),
                  id_member != nullptr};
  auto unknown_member = [&] {
    return Invalid(request.id, "unknown member \"" + std::string(unknown) + "\"");
  };
  if (!unknown.empty() && unknown_first) return unknown_member();
  if (params) {
    if (params->is_object()) {
      request.params = std::move(params->get_object());
    } else if (params->is_array() && params->get_array().empty()) {
      // "params": [] means "no parameters" to many clients; accept it as such.
    } else if (params->is_array()) {
      return Invalid(request.id, "positional (array) params are not supported; use an object");
    } else {
      return Invalid(request.id, "\"params\" must be an object");
    }
  }
  if (!unknown.empty()) return unknown_member();
  return request;
}

void AppendId(std::string& out, const json::value& id) { AppendJson(out, id); }

std::string_view ResultResponseHead() { return R"({"jsonrpc":"2.0","result":)"; }

void FinishResultResponse(std::string& out, const json::value& id) {
  out += R"(,"id":)";
  AppendId(out, id);
  out += '}';
}

std::string ResultResponse(const json::value& id, const json::value& result) {
  std::string out;
  out.reserve(256);  // one allocation for a small reply, rather than doubling from 15 bytes
  out.append(
      ResultResponseHead());  // into the reserved buffer (assigning a string would swap it out)
  AppendJson(out, result);
  FinishResultResponse(out, id);
  return out;
}

std::string ErrorResponse(const json::value& id, const RpcError& error) {
  json::object err;
  err["code"] = static_cast<int>(error.code());
  // A message quotes what the request named (a method, a param, an interface): a 60,000-byte
  // name made a 120 KB reply to a 60 KB request. data still carries the full value.
  std::string_view message = error.message();
  if (message.size() > kMaxErrorMessage) {
    size_t cut = kMaxErrorMessage;
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
    err["message"] = std::string(message.substr(0, cut)) + "...";
  } else {
    err["message"] = message;
  }
  json::object data = error.data();
  data["kind"] = ErrorKind(error.code());
  err["data"] = std::move(data);
  std::string out = R"({"jsonrpc":"2.0","error":)";
  AppendJson(out, err);
  out += R"(,"id":)";
  AppendId(out, id);
  out += '}';
  return out;
}

}  // namespace kvm::jsonrpc
