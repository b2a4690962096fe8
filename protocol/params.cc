#include "protocol/params.h"

#include <algorithm>
#include <cmath>

#include "protocol/errors.h"

namespace kvm {
namespace json = boost::json;

void Params::Fail(std::string_view name, std::string_view expected) {
  throw RpcError(ErrorCode::kInvalidParams,
                 "Invalid params: \"" + std::string(name) + "\" must be " + std::string(expected),
                 {{"param", name}, {"expected", expected}});
}

Params::Params(const json::object& params, std::initializer_list<std::string_view> allowed)
    : params_(params) {
  for (const auto& [key, value] : params) {
    if (std::find(allowed.begin(), allowed.end(), std::string_view(key)) == allowed.end()) {
      throw RpcError(ErrorCode::kInvalidParams,
                     "Invalid params: unknown param \"" + std::string(key) + "\"",
                     {{"param", key}, {"expected", "absent (unknown param)"}});
    }
  }
}

const json::value* Params::Find(std::string_view name) const {
  auto it = params_.find(name);
  return it == params_.end() ? nullptr : &it->value();
}

bool Params::Has(std::string_view name) const { return Find(name) != nullptr; }

std::optional<std::string> Params::OptionalString(std::string_view name) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_string()) Fail(name, "a string");
  return std::string(v->get_string());
}

std::string Params::RequiredString(std::string_view name) const {
  auto s = OptionalString(name);
  if (!s) Fail(name, "a string (required)");
  return *s;
}

std::optional<int64_t> Params::OptionalInt(std::string_view name, int64_t min, int64_t max) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return std::nullopt;
  std::string range = "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  int64_t result;
  if (v->is_int64()) {
    result = v->get_int64();
  } else if (v->is_uint64()) {
    if (v->get_uint64() > static_cast<uint64_t>(INT64_MAX)) Fail(name, range);
    result = static_cast<int64_t>(v->get_uint64());
  } else if (v->is_double()) {
    double d = v->get_double();
    if (!(std::trunc(d) == d) || d < -9.2e18 || d > 9.2e18) Fail(name, range);
    result = static_cast<int64_t>(d);
  } else {
    Fail(name, range);
  }
  if (result < min || result > max) Fail(name, range);
  return result;
}

int64_t Params::RequiredInt(std::string_view name, int64_t min, int64_t max) const {
  auto i = OptionalInt(name, min, max);
  if (!i) Fail(name, "an integer (required)");
  return *i;
}

std::optional<uint64_t> Params::OptionalUint(std::string_view name, uint64_t max) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return std::nullopt;
  std::string range = "an integer in [0, " + std::to_string(max) + "]";
  uint64_t result;
  if (v->is_uint64()) {
    result = v->get_uint64();
  } else if (v->is_int64()) {
    if (v->get_int64() < 0) Fail(name, range);
    result = static_cast<uint64_t>(v->get_int64());
  } else if (v->is_double()) {
    double d = v->get_double();
    if (!(std::trunc(d) == d) || d < 0 || d > 1.8e19) Fail(name, range);
    result = static_cast<uint64_t>(d);
  } else {
    Fail(name, range);
  }
  if (result > max) Fail(name, range);
  return result;
}

std::optional<bool> Params::OptionalBool(std::string_view name) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_bool()) Fail(name, "a boolean");
  return v->get_bool();
}

std::optional<std::vector<std::string>> Params::OptionalStringArray(std::string_view name) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_array()) Fail(name, "an array of strings");
  std::vector<std::string> out;
  out.reserve(v->get_array().size());
  for (const auto& item : v->get_array()) {
    if (!item.is_string()) Fail(name, "an array of strings");
    out.emplace_back(item.get_string());
  }
  return out;
}

const json::object* Params::OptionalObject(std::string_view name) const {
  const json::value* v = Find(name);
  if (!v || v->is_null()) return nullptr;
  if (!v->is_object()) Fail(name, "an object");
  return &v->get_object();
}

}  // namespace kvm
