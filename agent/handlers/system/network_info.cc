#include "agent/handlers/system/network_info.h"

#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <memory>
#include <map>

#include "agent/core/unique_fd.h"
#include "protocol/errors.h"

namespace kvm::sysinfo {
namespace json = boost::json;
namespace {

// Walks the rtattrs of one message body; calls fn(type, payload).
template <class Fn>
void ForEachAttr(std::string_view attrs, Fn&& fn) {
  while (attrs.size() >= sizeof(rtattr)) {
    rtattr a;
    std::memcpy(&a, attrs.data(), sizeof a);
    if (a.rta_len < sizeof(rtattr) || a.rta_len > attrs.size()) return;
    fn(a.rta_type & NLA_TYPE_MASK, attrs.substr(RTA_LENGTH(0), a.rta_len - RTA_LENGTH(0)));
    size_t step = RTA_ALIGN(a.rta_len);
    if (step >= attrs.size()) return;
    attrs.remove_prefix(step);
  }
}

// Walks the messages of a dump; calls fn(type, body) for each regular message.
template <class Fn>
void ForEachMessage(std::string_view buf, Fn&& fn) {
  while (buf.size() >= sizeof(nlmsghdr)) {
    nlmsghdr h;
    std::memcpy(&h, buf.data(), sizeof h);
    if (h.nlmsg_len < sizeof(nlmsghdr) || h.nlmsg_len > buf.size()) return;
    fn(h.nlmsg_type, buf.substr(NLMSG_HDRLEN, h.nlmsg_len - NLMSG_HDRLEN));
    size_t step = NLMSG_ALIGN(h.nlmsg_len);
    if (step >= buf.size()) return;
    buf.remove_prefix(step);
  }
}

template <class T>
std::optional<T> Scalar(std::string_view payload) {
  if (payload.size() < sizeof(T)) return std::nullopt;
  T v;
  std::memcpy(&v, payload.data(), sizeof v);
  return v;
}

std::string CString(std::string_view payload) {
  return std::string(payload.substr(0, payload.find('\0')));
}

// RFC 2863 operational states as IFLA_OPERSTATE sends them (IF_OPER_* of linux/if.h, which
// cannot be included next to glibc's net/if.h).
enum : uint8_t {
  kOperUnknown,
  kOperNotPresent,
  kOperDown,
  kOperLowerLayerDown,
  kOperTesting,
  kOperDormant,
  kOperUp
};

const char* OperState(uint8_t s) {
  switch (s) {
    case kOperNotPresent:
      return "notpresent";
    case kOperDown:
      return "down";
    case kOperLowerLayerDown:
      return "lowerlayerdown";
    case kOperTesting:
      return "testing";
    case kOperDormant:
      return "dormant";
    case kOperUp:
      return "up";
    default:
      return "unknown";
  }
}

std::string LinkType(unsigned type) {
  switch (type) {
    case ARPHRD_ETHER:
      return "ether";
    case ARPHRD_LOOPBACK:
      return "loopback";
    case ARPHRD_NONE:
      return "none";
    case ARPHRD_TUNNEL:
      return "ipip";
    case ARPHRD_TUNNEL6:
      return "tunnel6";
    case ARPHRD_SIT:
      return "sit";
    case ARPHRD_IPGRE:
      return "gre";
    case 823:
      return "gre6";  // ARPHRD_IP6GRE, missing from glibc's net/if_arp.h
    case ARPHRD_PPP:
      return "ppp";
    case ARPHRD_INFINIBAND:
      return "infiniband";
    case ARPHRD_IEEE80211:
      return "ieee802.11";
    case ARPHRD_VOID:
      return "void";
    default:
      return std::to_string(type);
  }
}

std::string Scope(int scope) {
  switch (scope) {
    case RT_SCOPE_UNIVERSE:
      return "global";
    case RT_SCOPE_SITE:
      return "site";
    case RT_SCOPE_LINK:
      return "link";
    case RT_SCOPE_HOST:
      return "host";
    case RT_SCOPE_NOWHERE:
      return "nowhere";
    default:
      return std::to_string(scope);
  }
}

json::array LinkFlags(unsigned f) {
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {IFF_UP, "up"},
      {IFF_BROADCAST, "broadcast"},
      {IFF_DEBUG, "debug"},
      {IFF_LOOPBACK, "loopback"},
      {IFF_POINTOPOINT, "pointopoint"},
      {IFF_NOTRAILERS, "notrailers"},
      {IFF_RUNNING, "running"},
      {IFF_NOARP, "noarp"},
      {IFF_PROMISC, "promisc"},
      {IFF_ALLMULTI, "allmulti"},
      {IFF_MASTER, "master"},
      {IFF_SLAVE, "slave"},
      {IFF_MULTICAST, "multicast"},
      {IFF_PORTSEL, "portsel"},
      {IFF_AUTOMEDIA, "automedia"},
      {IFF_DYNAMIC, "dynamic"},
      {1u << 16, "lower_up"},
      {1u << 17, "dormant"},
      {1u << 18, "echo"},
  };
  json::array out;
  for (auto [bit, name] : kNames) {
    if (f & bit) out.emplace_back(name);
  }
  return out;
}

json::array AddrFlags(int family, uint32_t f) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {IFA_F_NODAD, "nodad"},
      {IFA_F_OPTIMISTIC, "optimistic"},
      {IFA_F_DADFAILED, "dadfailed"},
      {IFA_F_HOMEADDRESS, "homeaddress"},
      {IFA_F_DEPRECATED, "deprecated"},
      {IFA_F_TENTATIVE, "tentative"},
      {IFA_F_PERMANENT, "permanent"},
      {IFA_F_MANAGETEMPADDR, "mngtmpaddr"},
      {IFA_F_NOPREFIXROUTE, "noprefixroute"},
      {IFA_F_MCAUTOJOIN, "autojoin"},
      {IFA_F_STABLE_PRIVACY, "stable-privacy"},
  };
  json::array out;
  // One bit, two meanings: a secondary IPv4 address, a temporary (privacy) IPv6 address.
  if (f & IFA_F_SECONDARY) out.emplace_back(family == AF_INET6 ? "temporary" : "secondary");
  for (auto [bit, name] : kNames) {
    if (f & bit) out.emplace_back(name);
  }
  return out;
}

json::value Lifetime(const std::optional<uint32_t>& v) {
  if (!v || *v == 0xFFFFFFFFu) return nullptr;  // forever
  return *v;
}

// Parses "nameserver"/"search"/"domain" lines of a resolv.conf.
void ParseResolvConf(std::string_view text, json::array& servers, json::array* search) {
  for (auto raw : SplitLines(text)) {
    std::string_view line = raw.substr(0, raw.find_first_of("#;"));
    auto f = SplitFields(line);
    if (f.size() < 2) continue;
    if (f[0] == "nameserver") {
      servers.emplace_back(ToValidUtf8(f[1]));
    } else if (search && (f[0] == "search" || f[0] == "domain")) {
      search->clear();  // the last search/domain line wins, as in the resolver
      for (size_t i = 1; i < f.size(); ++i) search->emplace_back(ToValidUtf8(f[i]));
    }
  }
}

// One rtnetlink dump request on `fd`; returns the concatenated reply messages, or nullopt
// when the kernel flagged the dump as interrupted by a concurrent change (retry it).
std::optional<std::string> Dump(int fd, uint16_t type, uint8_t family, uint32_t seq, char* buf,
                                size_t buf_size) {
  // Header plus a zeroed family-specific body whose first byte is the address family.
  size_t body_len = type == RTM_GETLINK   ? sizeof(ifinfomsg)
                    : type == RTM_GETADDR ? sizeof(ifaddrmsg)
                                          : sizeof(rtmsg);
  char req[NLMSG_LENGTH(sizeof(ifinfomsg))] = {};
  nlmsghdr h{};
  h.nlmsg_len = NLMSG_LENGTH(body_len);
  h.nlmsg_type = type;
  h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  h.nlmsg_seq = seq;
  std::memcpy(req, &h, sizeof h);
  req[NLMSG_HDRLEN] = static_cast<char>(family);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, req, h.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    throw RpcError(ErrorCode::kIoError, "netlink request failed",
                   {{"errno", errno}, {"detail", std::strerror(errno)}});
  }
  std::string out;
  bool interrupted = false;
  for (;;) {
    ssize_t n = ::recv(fd, buf, buf_size, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw RpcError(ErrorCode::kIoError, "netlink receive failed",
                     {{"errno", errno}, {"detail", std::strerror(errno)}});
    }
    std::string_view chunk(buf, static_cast<size_t>(n));
    while (chunk.size() >= sizeof(nlmsghdr)) {
      nlmsghdr m;
      std::memcpy(&m, chunk.data(), sizeof m);
      if (m.nlmsg_len < sizeof(nlmsghdr) || m.nlmsg_len > chunk.size()) break;
      size_t step = std::min<size_t>(NLMSG_ALIGN(m.nlmsg_len), chunk.size());
      if (m.nlmsg_seq == seq) {
        if (m.nlmsg_flags & NLM_F_DUMP_INTR) interrupted = true;
        if (m.nlmsg_type == NLMSG_DONE) {
          if (interrupted) return std::nullopt;
          return out;
        }
        if (m.nlmsg_type == NLMSG_ERROR) {
          nlmsgerr e{};
          if (m.nlmsg_len >= NLMSG_LENGTH(sizeof e)) {
            std::memcpy(&e, chunk.data() + NLMSG_HDRLEN, sizeof e);
          }
          int error = e.error < 0 ? -e.error : EPROTO;
          throw RpcError(ErrorCode::kIoError, "netlink dump refused",
                         {{"errno", error}, {"detail", std::strerror(error)}});
        }
        out.append(chunk.substr(0, step));
        out.resize(NLMSG_ALIGN(out.size()), '\0');
      }
      chunk.remove_prefix(step);
    }
  }
}

}  // namespace

std::string FormatIp(int family, std::string_view raw) {
  char text[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET && raw.size() == 4) {
    ::inet_ntop(AF_INET, raw.data(), text, sizeof text);
  } else if (family == AF_INET6 && raw.size() == 16) {
    ::inet_ntop(AF_INET6, raw.data(), text, sizeof text);
  } else {
    return {};
  }
  return text;
}

std::string FormatMac(std::string_view raw) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (i) out.push_back(':');
    auto b = static_cast<unsigned char>(raw[i]);
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

std::vector<LinkInfo> ParseLinkMessages(std::string_view buf) {
  std::vector<LinkInfo> links;
  ForEachMessage(buf, [&](uint16_t type, std::string_view body) {
    if (type != RTM_NEWLINK || body.size() < sizeof(ifinfomsg)) return;
    ifinfomsg ifi;
    std::memcpy(&ifi, body.data(), sizeof ifi);
    LinkInfo l;
    l.index = ifi.ifi_index;
    l.flags = ifi.ifi_flags;
    l.type = ifi.ifi_type;
    ForEachAttr(body.substr(NLMSG_ALIGN(sizeof ifi)), [&](unsigned short t, std::string_view p) {
      switch (t) {
        case IFLA_IFNAME:
          l.name = CString(p);
          break;
        case IFLA_ADDRESS:
          l.hw_address = std::string(p);
          break;
        case IFLA_MTU:
          l.mtu = Scalar<uint32_t>(p);
          break;
        case IFLA_OPERSTATE:
          l.operstate = Scalar<uint8_t>(p);
          break;
        case IFLA_MASTER:
          l.master = static_cast<int>(Scalar<uint32_t>(p).value_or(0));
          break;
        case IFLA_STATS64:
          if (auto s = Scalar<rtnl_link_stats64>(p)) {
            l.stats = LinkStats{s->rx_bytes, s->rx_packets, s->rx_errors, s->rx_dropped,
                                s->tx_bytes, s->tx_packets, s->tx_errors, s->tx_dropped};
          }
          break;
        case IFLA_STATS:
          if (auto s = Scalar<rtnl_link_stats>(p); s && !l.stats) {
            l.stats = LinkStats{s->rx_bytes, s->rx_packets, s->rx_errors, s->rx_dropped,
                                s->tx_bytes, s->tx_packets, s->tx_errors, s->tx_dropped};
          }
          break;
        case IFLA_LINKINFO:
          ForEachAttr(p, [&](unsigned short it, std::string_view ip) {
            if (it == IFLA_INFO_KIND) l.kind = CString(ip);
          });
          break;
        default:
          break;
      }
    });
    links.push_back(std::move(l));
  });
  return links;
}

std::vector<AddrInfo> ParseAddrMessages(std::string_view buf) {
  std::vector<AddrInfo> addrs;
  ForEachMessage(buf, [&](uint16_t type, std::string_view body) {
    if (type != RTM_NEWADDR || body.size() < sizeof(ifaddrmsg)) return;
    ifaddrmsg ifa;
    std::memcpy(&ifa, body.data(), sizeof ifa);
    AddrInfo a;
    a.index = static_cast<int>(ifa.ifa_index);
    a.family = ifa.ifa_family;
    a.prefix_length = ifa.ifa_prefixlen;
    a.scope = ifa.ifa_scope;
    a.flags = ifa.ifa_flags;
    ForEachAttr(body.substr(NLMSG_ALIGN(sizeof ifa)), [&](unsigned short t, std::string_view p) {
      switch (t) {
        case IFA_ADDRESS:
          a.address = std::string(p);
          break;
        case IFA_LOCAL:
          a.local = std::string(p);
          break;
        case IFA_BROADCAST:
          a.broadcast = std::string(p);
          break;
        case IFA_LABEL:
          a.label = CString(p);
          break;
        case IFA_FLAGS:
          a.flags = Scalar<uint32_t>(p).value_or(a.flags);
          break;  // 32-bit set
        case IFA_CACHEINFO:
          if (auto ci = Scalar<ifa_cacheinfo>(p)) {
            a.valid_lifetime = ci->ifa_valid;
            a.preferred_lifetime = ci->ifa_prefered;
          }
          break;
        default:
          break;
      }
    });
    if (a.family == AF_INET || a.family == AF_INET6) addrs.push_back(std::move(a));
  });
  return addrs;
}

std::vector<RouteInfo> ParseRouteMessages(std::string_view buf) {
  std::vector<RouteInfo> routes;
  ForEachMessage(buf, [&](uint16_t type, std::string_view body) {
    if (type != RTM_NEWROUTE || body.size() < sizeof(rtmsg)) return;
    rtmsg rtm;
    std::memcpy(&rtm, body.data(), sizeof rtm);
    RouteInfo r;
    r.family = rtm.rtm_family;
    r.dst_length = rtm.rtm_dst_len;
    r.table = rtm.rtm_table;
    r.type = rtm.rtm_type;
    ForEachAttr(body.substr(NLMSG_ALIGN(sizeof rtm)), [&](unsigned short t, std::string_view p) {
      switch (t) {
        case RTA_TABLE:
          r.table = Scalar<uint32_t>(p).value_or(r.table);
          break;
        case RTA_OIF:
          r.oif = static_cast<int>(Scalar<uint32_t>(p).value_or(0));
          break;
        case RTA_GATEWAY:
          r.gateway = std::string(p);
          break;
        case RTA_PRIORITY:
          r.metric = Scalar<uint32_t>(p);
          break;
        case RTA_MULTIPATH:
          while (p.size() >= sizeof(rtnexthop)) {
            rtnexthop nh;
            std::memcpy(&nh, p.data(), sizeof nh);
            if (nh.rtnh_len < sizeof nh || nh.rtnh_len > p.size()) break;
            std::string gw;
            ForEachAttr(p.substr(RTNH_LENGTH(0), nh.rtnh_len - RTNH_LENGTH(0)),
                        [&](unsigned short nt, std::string_view np) {
                          if (nt == RTA_GATEWAY) gw = std::string(np);
                        });
            r.nexthops.emplace_back(nh.rtnh_ifindex, gw);
            size_t step = RTNH_ALIGN(nh.rtnh_len);
            if (step >= p.size()) break;
            p.remove_prefix(step);
          }
          break;
        default:
          break;
      }
    });
    routes.push_back(std::move(r));
  });
  return routes;
}

json::object BuildNetworkInfo(const std::vector<LinkInfo>& links,
                              const std::vector<AddrInfo>& addrs,
                              const std::vector<RouteInfo>& routes, const DnsSources& dns,
                              const NetworkFilter& filter) {
  std::map<int, const LinkInfo*> by_index;
  for (const auto& l : links) by_index[l.index] = &l;
  auto name_of = [&](int index) -> json::value {
    auto it = by_index.find(index);
    if (it == by_index.end()) return nullptr;
    return json::string(ToValidUtf8(it->second->name));
  };
  if (filter.interface) {
    bool found = false;
    for (const auto& l : links) found = found || l.name == *filter.interface;
    if (!found) {
      throw RpcError(ErrorCode::kNotFound,
                     "no network interface named '" + ToValidUtf8(*filter.interface) + "'",
                     {{"interface", ToValidUtf8(*filter.interface)}});
    }
  }

  json::array interfaces;
  for (const auto& l : links) {
    if (filter.interface && l.name != *filter.interface) continue;
    if (filter.exclude_loopback && (l.flags & IFF_LOOPBACK)) continue;
    json::array addresses;
    for (const auto& a : addrs) {
      if (a.index != l.index) continue;
      // For IPv4 IFA_LOCAL is the interface's own address and IFA_ADDRESS the peer of a
      // point-to-point link; IPv6 sends only IFA_ADDRESS unless it is point-to-point too.
      const std::string& own = a.local.empty() ? a.address : a.local;
      std::string peer = (!a.local.empty() && a.address != a.local) ? a.address : "";
      json::object o{
          {"family", a.family == AF_INET ? "ipv4" : "ipv6"},
          {"address", FormatIp(a.family, own)},
          {"prefix_length", a.prefix_length},
          {"scope", Scope(a.scope)},
      };
      if (!peer.empty()) o["peer"] = FormatIp(a.family, peer);
      if (!a.broadcast.empty()) o["broadcast"] = FormatIp(a.family, a.broadcast);
      if (!a.label.empty() && a.label != l.name) o["label"] = ToValidUtf8(a.label);
      o["flags"] = AddrFlags(a.family, a.flags);
      o["valid_lifetime_seconds"] = Lifetime(a.valid_lifetime);
      o["preferred_lifetime_seconds"] = Lifetime(a.preferred_lifetime);
      addresses.push_back(std::move(o));
    }
    json::value stats = nullptr;
    if (l.stats) {
      const LinkStats& s = *l.stats;
      stats = json::object{{"rx_bytes", s.rx_bytes},   {"rx_packets", s.rx_packets},
                           {"rx_errors", s.rx_errors}, {"rx_dropped", s.rx_dropped},
                           {"tx_bytes", s.tx_bytes},   {"tx_packets", s.tx_packets},
                           {"tx_errors", s.tx_errors}, {"tx_dropped", s.tx_dropped}};
    }
    interfaces.push_back(json::object{
        {"name", ToValidUtf8(l.name)},
        {"index", l.index},
        {"type", LinkType(l.type)},
        {"kind", l.kind.empty() ? json::value(nullptr) : json::value(ToValidUtf8(l.kind))},
        {"mac", l.hw_address.empty() ? json::value(nullptr) : json::value(FormatMac(l.hw_address))},
        {"mtu", l.mtu ? json::value(*l.mtu) : json::value(nullptr)},
        {"operstate", l.operstate ? OperState(*l.operstate) : "unknown"},
        {"up", (l.flags & IFF_UP) != 0},
        {"loopback", (l.flags & IFF_LOOPBACK) != 0},
        {"flags", LinkFlags(l.flags)},
        {"master", l.master ? name_of(l.master) : json::value(nullptr)},
        {"addresses", std::move(addresses)},
        {"stats", std::move(stats)},
    });
  }

  json::array defaults;
  for (const auto& r : routes) {
    if ((r.family != AF_INET && r.family != AF_INET6) || r.dst_length != 0 ||
        r.table != RT_TABLE_MAIN || r.type != RTN_UNICAST) {
      continue;
    }
    auto add = [&](int oif, const std::string& gw) {
      defaults.push_back(json::object{
          {"family", r.family == AF_INET ? "ipv4" : "ipv6"},
          {"gateway", gw.empty() ? json::value(nullptr) : json::value(FormatIp(r.family, gw))},
          {"interface", oif ? name_of(oif) : json::value(nullptr)},
          {"metric", r.metric ? json::value(*r.metric) : json::value(0)},
      });
    };
    if (r.nexthops.empty()) {
      add(r.oif, r.gateway);
    } else {
      for (const auto& [oif, gw] : r.nexthops) add(oif, gw);
    }
  }

  json::array servers, search, upstream;
  if (dns.resolv_conf) ParseResolvConf(*dns.resolv_conf, servers, &search);
  bool stub = false;
  for (const auto& s : servers) stub = stub || s == "127.0.0.53" || s == "127.0.0.54";
  if (stub && dns.resolved_resolv_conf)
    ParseResolvConf(*dns.resolved_resolv_conf, upstream, nullptr);
  json::object dns_obj{{"nameservers", std::move(servers)}, {"search", std::move(search)}};
  // systemd-resolved's stub hides the real servers; its own file lists them.
  if (stub) dns_obj["upstream_nameservers"] = std::move(upstream);

  return json::object{{"interfaces", std::move(interfaces)},
                      {"default_routes", std::move(defaults)},
                      {"dns", std::move(dns_obj)}};
}

json::object CollectNetworkInfo(const SystemRoot& sys, const NetworkFilter& filter,
                                NetlinkSession* session) {
  NetlinkSession own;
  NetlinkSession& nl = session ? *session : own;
  std::unique_lock lock(nl.mu);
  if (!nl.fd) {
    nl.fd.reset(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!nl.fd) {
      throw RpcError(ErrorCode::kIoError, "cannot open a netlink socket",
                     {{"errno", errno}, {"detail", std::strerror(errno)}});
    }
    timeval tv{5, 0};  // the kernel answers at once; this only guards against the impossible
    ::setsockopt(nl.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  constexpr size_t kRecvSize = 64 * 1024;
  std::unique_ptr<char[]> buf(new char[kRecvSize]);  // not zeroed: recv fills what it returns
  std::optional<std::string> link_buf, addr_buf, route_buf;
  try {
    // A dump interrupted by a concurrent change is retried a few times.
    for (int attempt = 0;; ++attempt) {
      link_buf = Dump(nl.fd.get(), RTM_GETLINK, AF_UNSPEC, nl.seq++, buf.get(), kRecvSize);
      addr_buf = Dump(nl.fd.get(), RTM_GETADDR, AF_UNSPEC, nl.seq++, buf.get(), kRecvSize);
      route_buf = Dump(nl.fd.get(), RTM_GETROUTE, AF_UNSPEC, nl.seq++, buf.get(), kRecvSize);
      if (link_buf && addr_buf && route_buf) break;
      if (attempt == 4) {
        throw RpcError(ErrorCode::kIoError, "netlink dumps kept changing under us",
                       {{"errno", EAGAIN}, {"detail", "NLM_F_DUMP_INTR"}});
      }
    }
  } catch (...) {
    nl.fd.reset();  // a half-read dump must not be seen by the next call
    throw;
  }
  lock.unlock();
  DnsSources dns{ReadText(sys, "/etc/resolv.conf", 256 * 1024),
                 ReadText(sys, "/run/systemd/resolve/resolv.conf", 256 * 1024)};
  return BuildNetworkInfo(ParseLinkMessages(*link_buf), ParseAddrMessages(*addr_buf),
                          ParseRouteMessages(*route_buf), dns, filter);
}

}  // namespace kvm::sysinfo
