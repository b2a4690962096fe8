#include "ctl/ctl.h"

#include <boost/json.hpp>

#include <cstdio>

#include "ctl/json_print.h"
#include "ctl/terminal_text.h"

namespace kvm::ctl {

std::unique_ptr<AgentClient> Connect(const Options& options) {
  if (options.socket.empty()) {
    throw UsageError("no socket given: use --socket PATH or set KVMMANAGER_SOCKET");
  }
  return std::make_unique<AgentClient>(
      options.socket,
      std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000)));
}

std::string_view ErrorKind(const CallResult& result) {
  if (result.ok || !result.error_data.is_object()) return {};
  const boost::json::value* kind = result.error_data.get_object().if_contains("kind");
  return kind && kind->is_string() ? std::string_view(kind->get_string()) : std::string_view();
}

void PrintRpcError(const CallResult& result) {
  // All of it is the guest's text: control characters never reach the terminal raw.
  std::string kind = ForTerminal(ErrorKind(result));
  std::fprintf(stderr, "error %lld%s%s%s: %s\n", static_cast<long long>(result.error_code),
               kind.empty() ? "" : " (", kind.c_str(), kind.empty() ? "" : ")",
               ForTerminal(result.error_message).c_str());
  if (!result.error_data.is_null()) {
    std::fprintf(stderr, "data: %s\n",
                 ForTerminal(boost::json::serialize(result.error_data)).c_str());
  }
}

CallResult CallOrPrint(AgentClient& client, std::string_view method,
                       const boost::json::object& params) {
  CallResult result = client.Call(method, params);
  if (!result.ok) PrintRpcError(result);
  return result;
}

void ThrowMalformed(std::string_view what, const boost::json::value& got) {
  std::string shown = CompactJson(got);
  if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
  throw ClientError("malformed reply: " + std::string(what) + " " + ForTerminal(shown));
}

void RequireObjectResult(const boost::json::value& result, std::string_view method) {
  if (!result.is_object()) {
    ThrowMalformed("the " + std::string(method) + " result should be an object but is", result);
  }
}

void CallAndShow(Options& options, std::string_view method, const boost::json::object& params,
                 const std::function<void(const boost::json::value& result)>& show,
                 ResultShape shape) {
  auto client = Connect(options);
  CallResult result = CallOrPrint(*client, method, params);
  if (!result.ok) {
    options.exit_code = kExitRpcError;
    return;
  }
  if (shape == ResultShape::kObject) RequireObjectResult(result.result, method);
  if (options.json) {
    std::printf("%s\n", CompactJson(result.result).c_str());
    return;
  }
  show(result.result);
}

}  // namespace kvm::ctl
