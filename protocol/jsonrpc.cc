#include "protocol/jsonrpc.h"

#include <boost/json/parser.hpp>
#include <boost/json/serialize.hpp>

#include "protocol/json_write.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace kvm::jsonrpc {
namespace json = boost::json;

json::value ParseLine(std::string_view line) {
  json::parse_options options;
  options.max_depth = kMaxDepth;
  json::parser parser(json::storage_ptr(), options);
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

  json::value id = nullptr;
  bool has_id = false;
  if (auto it = object->find("id"); it != object->end()) {
    if (!IsValidIdType(it->value()))
      return Invalid(nullptr, "id must be a string, a finite number or null");
    id = it->value();
    has_id = true;
  }
  auto version = object->find("jsonrpc");
  if (version == object->end() || version->value() != "2.0") {
    return Invalid(id, "\"jsonrpc\" must be exactly \"2.0\"");
  }
  auto method = object->find("method");
  if (method == object->end() || !method->value().is_string()) {
    return Invalid(id, "\"method\" must be a string");
  }
  Request request;
  request.id = std::move(id);
  request.has_id = has_id;
  request.method = std::string(method->value().get_string());
  for (auto& [key, value] : *object) {
    if (key == "params") {
      if (value.is_object()) {
        request.params = std::move(value.get_object());
      } else if (value.is_array() && value.get_array().empty()) {
        // "params": [] means "no parameters" to many clients; accept it as such.
      } else if (value.is_array()) {
        return Invalid(request.id, "positional (array) params are not supported; use an object");
      } else {
        return Invalid(request.id, "\"params\" must be an object");
      }
    } else if (key != "jsonrpc" && key != "method" && key != "id") {
      return Invalid(request.id, "unknown member \"" + std::string(key) + "\"");
    }
  }
  return request;
}

void AppendId(std::string& out, const json::value& id) { AppendJson(out, id); }

std::string ResultResponse(const json::value& id, const json::value& result) {
  std::string out = R"({"jsonrpc":"2.0","result":)";
  AppendJson(out, result);
  out += R"(,"id":)";
  AppendId(out, id);
  out += '}';
  return out;
}

std::string ErrorResponse(const json::value& id, const RpcError& error) {
  json::object err;
  err["code"] = static_cast<int>(error.code());
  err["message"] = error.what();
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
