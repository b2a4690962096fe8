// ping and get_agent_info: the agent describing itself.
#include <sys/utsname.h>

#include <boost/json.hpp>

#include <ctime>

#include "agent/handlers/register_all.h"
#include "protocol/params.h"
#include "version.h"

namespace kvm {
namespace json = boost::json;
namespace {

json::value Ping(const json::object& params, RequestContext& ctx) {
  Params p(params, {});
  json::object reply(2, ctx.storage());
  reply.emplace("pong", true);
  reply.emplace("timestamp", static_cast<int64_t>(std::time(nullptr)));
  return reply;
}

json::value GetAgentInfo(const MethodTable& table, const json::object& params,
                         RequestContext& ctx) {
  Params p(params, {});
  const Config& c = ctx.config();
  utsname uts{};
  ::uname(&uts);
  json::array methods;
  for (const auto& name : table.Names()) methods.emplace_back(name);
  return json::object{
      {"name", "kvmmanager-agent"},
      {"version", KVM_AGENT_VERSION},
      {"protocol_version", KVM_PROTOCOL_VERSION},
      {"platform", json::object{{"os", "linux"}, {"arch", uts.machine}}},
      {"methods", std::move(methods)},
      {"limits",
       json::object{
           {"max_message_size_kb", c.max_message_size_kb},
           {"max_concurrent_requests", c.max_concurrent_requests},
           {"request_timeout_seconds", c.request_timeout_seconds},
           {"max_file_size_mb", c.security.max_file_size_mb},
           {"max_command_timeout_seconds", c.security.max_command_timeout_seconds},
           {"command_whitelist_enabled", c.security.command_whitelist.has_value()},
       }},
  };
}

}  // namespace

void RegisterCoreMethods(MethodTable& table) {
  table.Add("ping", RunMode::kInline, Ping);
  table.Add("get_agent_info", RunMode::kInline,
            [&table](const json::object& params, RequestContext& ctx) {
              return GetAgentInfo(table, params, ctx);
            });
}

}  // namespace kvm
