// get_network_info: interfaces, addresses and default routes from rtnetlink dumps
// (RTM_GETLINK/GETADDR/GETROUTE), DNS servers from resolv.conf. The netlink parsers take raw
// message buffers so tests can feed fixture messages (odd interfaces) without a kernel.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "agent/core/unique_fd.h"
#include "agent/handlers/system/sys_common.h"

namespace kvm::sysinfo {

struct LinkStats {
  uint64_t rx_bytes = 0, rx_packets = 0, rx_errors = 0, rx_dropped = 0;
  uint64_t tx_bytes = 0, tx_packets = 0, tx_errors = 0, tx_dropped = 0;
};

struct LinkInfo {
  int index = 0;
  std::string name;
  unsigned flags = 0;      // IFF_*
  unsigned type = 0;       // ARPHRD_*
  std::string hw_address;  // raw bytes; empty when the link has none
  std::optional<uint32_t> mtu;
  std::optional<uint8_t> operstate;  // IF_OPER_*
  std::optional<LinkStats> stats;
  std::string kind;  // IFLA_INFO_KIND: veth, bridge, vlan...; empty for plain devices
  int master = 0;    // ifindex of the bridge/bond it is enslaved to
};

struct AddrInfo {
  int index = 0;
  int family = 0;  // AF_INET / AF_INET6
  int prefix_length = 0;
  int scope = 0;
  std::string address, local, broadcast;  // raw bytes
  std::string label;
  uint32_t flags = 0;                                          // IFA_F_*
  std::optional<uint32_t> valid_lifetime, preferred_lifetime;  // seconds; 0xFFFFFFFF = forever
};

struct RouteInfo {
  int family = 0;
  int dst_length = 0;
  uint32_t table = 0;
  int type = 0;
  int oif = 0;
  std::string gateway;  // raw bytes
  std::optional<uint32_t> metric;
  std::vector<std::pair<int, std::string>> nexthops;  // multipath: ifindex, gateway
};

// Parsers of concatenated netlink messages as a dump returns them; unknown or malformed
// messages and attributes are skipped.
std::vector<LinkInfo> ParseLinkMessages(std::string_view buf);
std::vector<AddrInfo> ParseAddrMessages(std::string_view buf);
std::vector<RouteInfo> ParseRouteMessages(std::string_view buf);

struct NetworkFilter {
  std::optional<std::string> interface;  // only this interface (not_found if absent)
  bool exclude_loopback = false;
};

struct DnsSources {
  std::optional<std::string> resolv_conf;           // /etc/resolv.conf text
  std::optional<std::string> resolved_resolv_conf;  // /run/systemd/resolve/resolv.conf text
};

// Assembles the result from parsed data; throws RpcError(kNotFound) for an unknown filter name.
boost::json::object BuildNetworkInfo(const std::vector<LinkInfo>& links,
                                     const std::vector<AddrInfo>& addrs,
                                     const std::vector<RouteInfo>& routes, const DnsSources& dns,
                                     const NetworkFilter& filter);

// A netlink socket kept between calls (socket, setsockopt and close were a fifth of the call's
// syscalls). Dropped after any error so no stale reply is read by the next call.
struct NetlinkSession {
  std::mutex mu;
  UniqueFd fd;
  uint32_t seq = 1;
};

// Live system: dumps over an AF_NETLINK socket (`session`'s, or a fresh one when null); DNS
// files read under `sys`.
boost::json::object CollectNetworkInfo(const SystemRoot& sys, const NetworkFilter& filter,
                                       NetlinkSession* session = nullptr);

// Formatting helpers (exposed for tests).
std::string FormatIp(int family, std::string_view raw);
std::string FormatMac(std::string_view raw);

}  // namespace kvm::sysinfo
