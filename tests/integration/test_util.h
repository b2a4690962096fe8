// Small helpers shared by the integration tests.
#pragma once

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <string>

#include "tests/support/agent_process.h"

namespace kvm::test {

// The error code of a reply line, or 0 if it is a result.
inline int64_t ErrorCodeOf(const boost::json::value& reply) {
  const auto& obj = reply.as_object();
  if (!obj.contains("error")) return 0;
  return obj.at("error").as_object().at("code").as_int64();
}

inline std::string Request(const std::string& method, const std::string& id,
                           const std::string& params = "") {
  std::string line = R"({"jsonrpc":"2.0","method":")" + method + "\"";
  if (!params.empty()) line += R"(,"params":)" + params;
  if (!id.empty()) line += R"(,"id":)" + id;
  return line + "}";
}

}  // namespace kvm::test
