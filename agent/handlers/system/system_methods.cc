// get_system_info, get_network_info, get_disk_usage: what a VM manager's dashboard shows.
#include <boost/json.hpp>
#include <chrono>

#include "agent/handlers/register_all.h"
#include "agent/handlers/system/disk_info.h"
#include "agent/handlers/system/network_info.h"
#include "agent/handlers/system/system_info.h"
#include "protocol/params.h"

namespace kvm {
namespace json = boost::json;

void RegisterSystemMethods(MethodTable& table) {
  // Tracks statvfs calls stuck on dead mounts across requests (one helper thread per mount).
  auto& statvfs_runner = table.Own(std::make_shared<sysinfo::BoundedStatvfs>());
  auto& disk_cache = table.Own(std::make_shared<sysinfo::DiskAttributeCache>());
  auto& info_cache = table.Own(std::make_shared<sysinfo::SystemInfoCache>(std::chrono::seconds(5)));
  auto& netlink = table.Own(std::make_shared<sysinfo::NetlinkSession>());
  const sysinfo::SystemRoot live{};

  // Inline: a handful of reads from /proc, /sys and /etc, none of which can block; the hop to a
  // worker and back would cost about as much as the work.
  table.Add("get_system_info", RunMode::kInline,
            [live, &info_cache](const json::object& params, RequestContext& ctx) {
              Params p(params, {});
              sysinfo::AppendSystemInfo(ctx.result_text(), live, &info_cache);
              return json::value();  // the result is the text above
            });

  // Inline too: three netlink dumps (the kernel builds them during our recvmsg, never waiting
  // on anything outside) and resolv.conf.
  table.Add("get_network_info", RunMode::kInline,
            [live, &netlink](const json::object& params, RequestContext&) {
              Params p(params, {"interface", "exclude_loopback"});
              sysinfo::NetworkFilter filter;
              filter.interface = p.OptionalString("interface");
              if (filter.interface && filter.interface->empty()) {
                Params::Fail("interface", "a non-empty interface name");
              }
              filter.exclude_loopback = p.OptionalBool("exclude_loopback").value_or(false);
              return json::value(sysinfo::CollectNetworkInfo(live, filter, &netlink));
            });

  table.Add("get_disk_usage", RunMode::kWorker,
            [live, &statvfs_runner, &disk_cache](const json::object& params, RequestContext&) {
              Params p(params, {"all", "timeout_ms"});
              sysinfo::DiskOptions options;
              options.all = p.OptionalBool("all").value_or(false);
              options.cache = &disk_cache;
              // Below the default request timeout (30 s) so the answer names the hung mount.
              options.timeout =
                  std::chrono::milliseconds(p.OptionalInt("timeout_ms", 1, 20000).value_or(2000));
              return json::value(sysinfo::CollectDiskUsage(live, options, statvfs_runner));
            });
}

}  // namespace kvm
