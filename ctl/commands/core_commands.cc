// call METHOD [PARAMS] and ping.
#include <boost/json.hpp>

#include <cmath>
#include <cstdio>

#include "ctl/ctl.h"
#include "ctl/json_print.h"
#include "protocol/jsonrpc.h"

namespace kvm::ctl {
namespace json = boost::json;
namespace {

// Whether `v` holds a number out of double range (1e999 parses as infinity): JSON has no
// text for it, and Boost would send "Infinity", which the agent cannot read.
bool HasNonFiniteNumber(const json::value& v) {
  if (v.is_double()) return !std::isfinite(v.get_double());
  if (v.is_array()) {
    for (const auto& item : v.get_array())
      if (HasNonFiniteNumber(item)) return true;
  }
  if (v.is_object()) {
    for (const auto& [key, item] : v.get_object())
      if (HasNonFiniteNumber(item)) return true;
  }
  return false;
}

}  // namespace

void AddCoreCommands(CLI::App& app, Options& options) {
  auto* call = app.add_subcommand("call", "call any method; prints the result as JSON");
  auto method = std::make_shared<std::string>();
  auto params_text = std::make_shared<std::string>();
  call->add_option("method", *method, "method name, e.g. get_agent_info")->required();
  auto* params_option = call->add_option("params", *params_text,
                                         "params as a JSON object, e.g. '{\"path\":\"/tmp/x\"}'");
  call->callback([&options, method, params_text, params_option] {
    json::object params;
    if (params_option->count() > 0) {  // given, even empty: it must be an object
      json::error_code ec;
      json::parse_options limits;
      limits.max_depth = jsonrpc::kMaxDepth - 1;  // the agent's limit, for the request around them
      json::value parsed = json::parse(*params_text, ec, {}, limits);
      if (ec == json::error::too_deep) {
        std::fprintf(stderr, "kvmmanager-ctl: params nest deeper than %zu levels\n",
                     jsonrpc::kMaxDepth - 1);
        options.exit_code = kExitUsage;
        return;
      }
      if (ec || !parsed.is_object()) {
        std::fprintf(stderr, "kvmmanager-ctl: params must be a JSON object%s%s\n", ec ? ": " : "",
                     ec ? ec.message().c_str() : "");
        options.exit_code = kExitUsage;
        return;
      }
      if (HasNonFiniteNumber(parsed)) {
        std::fprintf(stderr,
                     "kvmmanager-ctl: params hold a number too large for JSON (out of the "
                     "range of a double)\n");
        options.exit_code = kExitUsage;
        return;
      }
      params = std::move(parsed.get_object());
    }
    CallAndShow(options, *method, params,
                [](const json::value& result) { std::printf("%s\n", PrettyJson(result).c_str()); });
  });

  auto* ping = app.add_subcommand("ping", "check that the agent answers; prints the round trip");
  ping->callback([&options] {
    auto client = Connect(options);
    auto start = std::chrono::steady_clock::now();
    CallResult result = CallOrPrint(*client, "ping");
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
    if (!result.ok) {
      options.exit_code = kExitRpcError;
      return;
    }
    RequireObjectResult(result.result, "ping");
    if (const json::value* pong = result.result.get_object().if_contains("pong");
        !pong || !pong->is_bool() || !pong->get_bool()) {
      ThrowMalformed("the ping result has no \"pong\":true:", result.result);
    }
    if (options.json) {
      std::printf("%s\n", CompactJson(result.result).c_str());
    } else {
      std::printf("pong from %s in %.3f ms\n", options.socket.c_str(), micros / 1000.0);
    }
  });
}

}  // namespace kvm::ctl
