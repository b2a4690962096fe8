// Typed, strict access to a request's named params; every mistake becomes -32602 with context.
#pragma once

#include <boost/json/object.hpp>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvm {

// Usage in a handler:
//   Params p(params, {"path", "offset"});   // any other key is refused
//   std::string path = p.RequiredString("path");
//   uint64_t offset = p.OptionalUint("offset").value_or(0);
// Errors carry data {"param": name, "expected": what}.
class Params {
 public:
  Params(const boost::json::object& params, std::initializer_list<std::string_view> allowed);

  std::string RequiredString(std::string_view name) const;
  std::optional<std::string> OptionalString(std::string_view name) const;
  // Integers must be whole JSON numbers within [min, max].
  std::optional<int64_t> OptionalInt(std::string_view name, int64_t min, int64_t max) const;
  int64_t RequiredInt(std::string_view name, int64_t min, int64_t max) const;
  std::optional<uint64_t> OptionalUint(std::string_view name, uint64_t max = UINT64_MAX) const;
  std::optional<bool> OptionalBool(std::string_view name) const;
  std::optional<std::vector<std::string>> OptionalStringArray(std::string_view name) const;
  const boost::json::object* OptionalObject(std::string_view name) const;
  bool Has(std::string_view name) const;

  // For a check that is not about type: throws -32602 naming the param.
  [[noreturn]] static void Fail(std::string_view name, std::string_view expected);

 private:
  const boost::json::value* Find(std::string_view name) const;
  const boost::json::object& params_;
};

}  // namespace kvm
