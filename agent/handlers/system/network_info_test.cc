#include "agent/handlers/system/network_info.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>

#include <boost/json.hpp>
#include <cstring>

#include "protocol/errors.h"

namespace kvm::sysinfo {
namespace {
namespace json = boost::json;
// IF_OPER_* values (RFC 2863), as the kernel sends them.
constexpr int IF_OPER_UNKNOWN = 0, IF_OPER_DOWN = 2, IF_OPER_LOWERLAYERDOWN = 3, IF_OPER_UP = 6;

// Builds rtnetlink messages the way the kernel lays them out, for fixture dumps.
class Msgs {
 public:
  template <class Body>
  Msgs& Begin(uint16_t type, const Body& body) {
    start_ = buf_.size();
    nlmsghdr h{};
    h.nlmsg_type = type;
    Append(&h, sizeof h);
    Append(&body, sizeof body);
    Pad();
    return *this;
  }
  Msgs& Attr(uint16_t type, const void* data, size_t len) {
    rtattr a{};
    a.rta_type = type;
    a.rta_len = static_cast<unsigned short>(RTA_LENGTH(len));
    Append(&a, sizeof a);
    Append(data, len);
    Pad();
    return *this;
  }
  Msgs& Str(uint16_t type, const std::string& s) { return Attr(type, s.c_str(), s.size() + 1); }
  template <class T>
  Msgs& Val(uint16_t type, T v) {
    return Attr(type, &v, sizeof v);
  }
  Msgs& Ip(uint16_t type, int family, const char* text) {
    unsigned char raw[16];
    inet_pton(family, text, raw);
    return Attr(type, raw, family == AF_INET ? 4 : 16);
  }
  size_t Open(uint16_t type) {  // nested attribute; returns its offset for Close
    size_t at = buf_.size();
    rtattr a{};
    a.rta_type = type;
    Append(&a, sizeof a);
    return at;
  }
  void Close(size_t at) {
    unsigned short len = static_cast<unsigned short>(buf_.size() - at);
    std::memcpy(&buf_[at], &len, sizeof len);
  }
  Msgs& End() {
    uint32_t len = static_cast<uint32_t>(buf_.size() - start_);
    std::memcpy(&buf_[start_], &len, sizeof len);
    return *this;
  }
  std::string& str() { return buf_; }

 private:
  void Append(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }
  void Pad() { buf_.resize(NLMSG_ALIGN(buf_.size()), '\0'); }
  std::string buf_;
  size_t start_ = 0;
};

void AddLink(Msgs& m, int index, const std::string& name, unsigned flags, unsigned type,
             const std::string& mac, uint32_t mtu, int operstate) {
  ifinfomsg ifi{};
  ifi.ifi_index = index;
  ifi.ifi_flags = flags;
  ifi.ifi_type = static_cast<unsigned short>(type);
  m.Begin(RTM_NEWLINK, ifi).Str(IFLA_IFNAME, name);
  if (!mac.empty()) m.Attr(IFLA_ADDRESS, mac.data(), mac.size());
  m.Val<uint32_t>(IFLA_MTU, mtu);
  if (operstate >= 0) m.Val<uint8_t>(IFLA_OPERSTATE, static_cast<uint8_t>(operstate));
}

void AddAddr(Msgs& m, int index, int family, int prefix, int scope, const char* local,
             const char* address = nullptr) {
  ifaddrmsg ifa{};
  ifa.ifa_family = static_cast<unsigned char>(family);
  ifa.ifa_prefixlen = static_cast<unsigned char>(prefix);
  ifa.ifa_scope = static_cast<unsigned char>(scope);
  ifa.ifa_index = static_cast<unsigned>(index);
  m.Begin(RTM_NEWADDR, ifa).Ip(IFA_ADDRESS, family, address ? address : local);
  if (family == AF_INET) m.Ip(IFA_LOCAL, family, local);
}

const std::string kMac("\x52\x54\x00\xab\xcd\xef", 6);

TEST(NetlinkParsing, LinkAddressesAndStatsAreDecoded) {
  Msgs links;
  AddLink(links, 1, "lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING, ARPHRD_LOOPBACK,
          std::string(6, '\0'), 65536, IF_OPER_UNKNOWN);
  links.End();
  AddLink(links, 2, "eth0", IFF_UP | IFF_BROADCAST | IFF_MULTICAST | IFF_RUNNING | (1u << 16),
          ARPHRD_ETHER, kMac, 1500, IF_OPER_UP);
  rtnl_link_stats64 st{};
  st.rx_bytes = 1ull << 40;
  st.rx_packets = 7;
  st.tx_bytes = 99;
  st.tx_dropped = 3;
  links.Val(IFLA_STATS64, st).End();

  Msgs addrs;
  AddAddr(addrs, 2, AF_INET, 24, RT_SCOPE_UNIVERSE, "192.0.2.10");
  addrs.Ip(IFA_BROADCAST, AF_INET, "192.0.2.255").Str(IFA_LABEL, "eth0").End();
  AddAddr(addrs, 2, AF_INET, 24, RT_SCOPE_UNIVERSE, "192.0.2.11");
  addrs.Str(IFA_LABEL, "eth0:1").Val<uint32_t>(IFA_FLAGS, IFA_F_SECONDARY).End();
  AddAddr(addrs, 2, AF_INET6, 64, RT_SCOPE_LINK, "fe80::5054:ff:feab:cdef");
  addrs.Val<uint32_t>(IFA_FLAGS, IFA_F_PERMANENT).End();
  AddAddr(addrs, 2, AF_INET6, 64, RT_SCOPE_UNIVERSE, "2001:db8::10");
  ifa_cacheinfo ci{};
  ci.ifa_valid = 86400;
  ci.ifa_prefered = 14400;
  addrs.Val(IFA_CACHEINFO, ci).Val<uint32_t>(IFA_FLAGS, IFA_F_SECONDARY).End();

  json::object r =
      BuildNetworkInfo(ParseLinkMessages(links.str()), ParseAddrMessages(addrs.str()), {}, {}, {});
  const json::array& ifs = r["interfaces"].as_array();
  ASSERT_EQ(ifs.size(), 2u);
  const json::object& lo = ifs[0].as_object();
  EXPECT_EQ(lo.at("type"), "loopback");
  EXPECT_EQ(lo.at("loopback"), true);
  EXPECT_EQ(lo.at("mac"), "00:00:00:00:00:00");
  EXPECT_TRUE(lo.at("stats").is_null());
  const json::object& eth = ifs[1].as_object();
  EXPECT_EQ(eth.at("name"), "eth0");
  EXPECT_EQ(eth.at("index"), 2);
  EXPECT_EQ(eth.at("mac"), "52:54:00:ab:cd:ef");
  EXPECT_EQ(eth.at("mtu"), 1500);
  EXPECT_EQ(eth.at("operstate"), "up");
  EXPECT_EQ(eth.at("up"), true);
  EXPECT_EQ(eth.at("flags"), (json::array{"up", "broadcast", "running", "multicast", "lower_up"}));
  EXPECT_EQ(eth.at("stats").at("rx_bytes"), 1ull << 40);
  EXPECT_EQ(eth.at("stats").at("rx_packets"), 7u);
  EXPECT_EQ(eth.at("stats").at("tx_dropped"), 3u);
  const json::array& a = eth.at("addresses").as_array();
  ASSERT_EQ(a.size(), 4u);
  EXPECT_EQ(a[0], (json::object{{"family", "ipv4"},
                                {"address", "192.0.2.10"},
                                {"prefix_length", 24},
                                {"scope", "global"},
                                {"broadcast", "192.0.2.255"},
                                {"flags", json::array{}},
                                {"valid_lifetime_seconds", nullptr},
                                {"preferred_lifetime_seconds", nullptr}}));
  EXPECT_EQ(a[1].at("label"), "eth0:1");
  EXPECT_EQ(a[1].at("flags"), json::array{"secondary"});
  EXPECT_EQ(a[2].at("address"), "fe80::5054:ff:feab:cdef");
  EXPECT_EQ(a[2].at("scope"), "link");
  EXPECT_EQ(a[2].at("flags"), json::array{"permanent"});
  EXPECT_EQ(a[3].at("flags"), json::array{"temporary"});
  EXPECT_EQ(a[3].at("valid_lifetime_seconds"), 86400u);
  EXPECT_EQ(a[3].at("preferred_lifetime_seconds"), 14400u);
}

TEST(NetlinkParsing, OddInterfacesStillGiveValidJson) {
  Msgs links;
  // A tun device: no hardware address, no operstate attribute.
  AddLink(links, 5, "tun0", IFF_UP | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE, "", 1420, -1);
  links.End();
  // A bridge port with a name that is not UTF-8 and a bridge master.
  AddLink(links, 6,
          "br\xff"
          "0",
          IFF_UP | IFF_BROADCAST, ARPHRD_ETHER, kMac, 1500, IF_OPER_DOWN);
  size_t info = links.Open(IFLA_LINKINFO);
  links.Str(IFLA_INFO_KIND, "bridge");
  links.Close(info);
  links.End();
  AddLink(links, 7, "veth1", IFF_BROADCAST, ARPHRD_ETHER, kMac, 1500, IF_OPER_LOWERLAYERDOWN);
  links.Val<uint32_t>(IFLA_MASTER, 6).End();
  Msgs addrs;
  // Point-to-point IPv4: IFA_LOCAL is ours, IFA_ADDRESS the peer.
  AddAddr(addrs, 5, AF_INET, 32, RT_SCOPE_UNIVERSE, "10.8.0.2", "10.8.0.1");
  addrs.End();
  json::object r =
      BuildNetworkInfo(ParseLinkMessages(links.str()), ParseAddrMessages(addrs.str()), {}, {}, {});
  const json::array& ifs = r["interfaces"].as_array();
  ASSERT_EQ(ifs.size(), 3u);
  EXPECT_TRUE(ifs[0].at("mac").is_null());
  EXPECT_EQ(ifs[0].at("type"), "none");
  EXPECT_EQ(ifs[0].at("operstate"), "unknown");
  EXPECT_EQ(ifs[0].at("addresses").at(0).at("address"), "10.8.0.2");
  EXPECT_EQ(ifs[0].at("addresses").at(0).at("peer"), "10.8.0.1");
  EXPECT_EQ(ifs[1].at("name"),
            "br\xEF\xBF\xBD"
            "0");
  EXPECT_EQ(ifs[1].at("kind"), "bridge");
  EXPECT_EQ(ifs[2].at("master"),
            "br\xEF\xBF\xBD"
            "0");
  EXPECT_EQ(ifs[2].at("operstate"), "lowerlayerdown");
  EXPECT_EQ(ifs[2].at("up"), false);
  // The whole result must serialize to JSON that parses back (valid UTF-8).
  json::error_code ec;
  json::parse(json::serialize(r), ec);
  EXPECT_FALSE(ec);
}

TEST(NetlinkParsing, TruncatedAndMalformedMessagesAreSkippedNotTrusted) {
  Msgs links;
  AddLink(links, 3, "good", IFF_UP, ARPHRD_ETHER, kMac, 1500, IF_OPER_UP);
  links.End();
  std::string buf = links.str();
  // An attribute claiming to be longer than its message, then a message running off the end.
  Msgs bad;
  ifinfomsg ifi{};
  ifi.ifi_index = 4;
  bad.Begin(RTM_NEWLINK, ifi).Str(IFLA_IFNAME, "bad").End();
  std::string b = bad.str();
  uint16_t huge = 4000;
  std::memcpy(&b[NLMSG_HDRLEN + NLMSG_ALIGN(sizeof ifi)], &huge, sizeof huge);
  buf += b;
  std::string cut = links.str();
  uint32_t too_long = 100000;
  std::memcpy(&cut[0], &too_long, sizeof too_long);
  buf += cut;
  auto parsed = ParseLinkMessages(buf);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0].name, "good");
  EXPECT_EQ(parsed[1].index, 4);
  EXPECT_EQ(parsed[1].name, "");  // its attributes were not believed
  for (size_t n = 0; n < buf.size(); n += 7) ParseLinkMessages(std::string_view(buf).substr(0, n));
  EXPECT_TRUE(ParseAddrMessages(std::string(3, '\x7f')).empty());
  EXPECT_TRUE(ParseRouteMessages("").empty());
}

void AddRoute(Msgs& m, int family, int dst_len, int table, int type) {
  rtmsg rt{};
  rt.rtm_family = static_cast<unsigned char>(family);
  rt.rtm_dst_len = static_cast<unsigned char>(dst_len);
  rt.rtm_table = static_cast<unsigned char>(table);
  rt.rtm_type = static_cast<unsigned char>(type);
  m.Begin(RTM_NEWROUTE, rt);
}

TEST(NetlinkParsing, OnlyMainTableDefaultRoutesAreReported) {
  Msgs links;
  AddLink(links, 2, "eth0", IFF_UP, ARPHRD_ETHER, kMac, 1500, IF_OPER_UP);
  links.End();
  AddLink(links, 3, "eth1", IFF_UP, ARPHRD_ETHER, kMac, 1500, IF_OPER_UP);
  links.End();
  Msgs routes;
  AddRoute(routes, AF_INET, 0, RT_TABLE_MAIN, RTN_UNICAST);
  routes.Ip(RTA_GATEWAY, AF_INET, "192.0.2.1").Val<uint32_t>(RTA_OIF, 2).End();
  AddRoute(routes, AF_INET, 24, RT_TABLE_MAIN, RTN_UNICAST);  // not a default route
  routes.Val<uint32_t>(RTA_OIF, 2).End();
  AddRoute(routes, AF_INET, 0, RT_TABLE_LOCAL, RTN_UNICAST);  // other table
  routes.Val<uint32_t>(RTA_OIF, 2).End();
  AddRoute(routes, AF_INET6, 0, RT_TABLE_MAIN, RTN_UNICAST);
  routes.Ip(RTA_GATEWAY, AF_INET6, "fe80::1").Val<uint32_t>(RTA_OIF, 3);
  routes.Val<uint32_t>(RTA_PRIORITY, 1024).End();
  // Multipath (ECMP): two next hops in one route.
  AddRoute(routes, AF_INET6, 0, RT_TABLE_MAIN, RTN_UNICAST);
  size_t mp = routes.Open(RTA_MULTIPATH);
  for (int ifindex : {2, 3}) {
    Msgs nh_attrs;
    nh_attrs.Ip(RTA_GATEWAY, AF_INET6, ifindex == 2 ? "2001:db8::1" : "2001:db8::2");
    rtnexthop nh{};
    nh.rtnh_ifindex = ifindex;
    nh.rtnh_len = static_cast<unsigned short>(RTNH_LENGTH(nh_attrs.str().size()));
    routes.str().append(reinterpret_cast<const char*>(&nh), sizeof nh);
    routes.str() += nh_attrs.str();
  }
  routes.Close(mp);
  routes.End();
  json::object r = BuildNetworkInfo(ParseLinkMessages(links.str()), {},
                                    ParseRouteMessages(routes.str()), {}, {});
  EXPECT_EQ(
      r["default_routes"],
      (json::array{
          json::object{
              {"family", "ipv4"}, {"gateway", "192.0.2.1"}, {"interface", "eth0"}, {"metric", 0}},
          json::object{
              {"family", "ipv6"}, {"gateway", "fe80::1"}, {"interface", "eth1"}, {"metric", 1024}},
          json::object{
              {"family", "ipv6"}, {"gateway", "2001:db8::1"}, {"interface", "eth0"}, {"metric", 0}},
          json::object{
              {"family", "ipv6"}, {"gateway", "2001:db8::2"}, {"interface", "eth1"}, {"metric", 0}},
      }))
      << json::serialize(r["default_routes"]);
}

TEST(NetworkInfo, FiltersSelectByNameAndDropLoopback) {
  Msgs links;
  AddLink(links, 1, "lo", IFF_UP | IFF_LOOPBACK, ARPHRD_LOOPBACK, std::string(6, '\0'), 65536,
          IF_OPER_UNKNOWN);
  links.End();
  AddLink(links, 2, "eth0", IFF_UP, ARPHRD_ETHER, kMac, 1500, IF_OPER_UP);
  links.End();
  auto parsed = ParseLinkMessages(links.str());
  NetworkFilter no_lo;
  no_lo.exclude_loopback = true;
  auto r = BuildNetworkInfo(parsed, {}, {}, {}, no_lo);
  ASSERT_EQ(r["interfaces"].as_array().size(), 1u);
  EXPECT_EQ(r["interfaces"].at(0).at("name"), "eth0");
  NetworkFilter only_lo;
  only_lo.interface = "lo";
  r = BuildNetworkInfo(parsed, {}, {}, {}, only_lo);
  ASSERT_EQ(r["interfaces"].as_array().size(), 1u);
  EXPECT_EQ(r["interfaces"].at(0).at("name"), "lo");
  NetworkFilter missing;
  missing.interface = "wlan9";
  try {
    BuildNetworkInfo(parsed, {}, {}, {}, missing);
    FAIL() << "expected not_found";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_EQ(e.data().at("interface"), "wlan9");
  }
}

TEST(NetworkInfo, ResolvConfServersAndSearchDomains) {
  DnsSources dns;
  dns.resolv_conf =
      "# generated\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \n; old\n"
      "domain old.example\nsearch a.example b.example\noptions edns0\nnameserver fe80::1%eth0\n";
  auto r = BuildNetworkInfo({}, {}, {}, dns, {});
  EXPECT_EQ(r["dns"], (json::object{{"nameservers", {"192.0.2.53", "2001:db8::53", "fe80::1%eth0"}},
                                    {"search", {"a.example", "b.example"}}}));
}

TEST(NetworkInfo, SystemdResolvedStubAlsoListsUpstreamServers) {
  DnsSources dns;
  dns.resolv_conf = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
  dns.resolved_resolv_conf = "nameserver 192.168.1.1\nnameserver 192.168.1.2\nsearch lan\n";
  auto r = BuildNetworkInfo({}, {}, {}, dns, {});
  EXPECT_EQ(r["dns"].at("nameservers"), json::array{"127.0.0.53"});
  EXPECT_EQ(r["dns"].at("upstream_nameservers"), (json::array{"192.168.1.1", "192.168.1.2"}));
  dns.resolv_conf.reset();
  r = BuildNetworkInfo({}, {}, {}, dns, {});
  EXPECT_TRUE(r["dns"].at("nameservers").as_array().empty());
  EXPECT_FALSE(r["dns"].as_object().contains("upstream_nameservers"));
}

TEST(NetworkInfo, LiveNetlinkDumpHasTheLoopbackInterface) {
  // Cross-checks against `ip -j addr` live in the integration test; this guards the socket code.
  json::object r = CollectNetworkInfo(SystemRoot{}, {});
  bool found = false;
  for (const auto& i : r["interfaces"].as_array()) {
    if (i.at("loopback").as_bool()) {
      found = true;
      EXPECT_EQ(i.at("type"), "loopback");
    }
  }
  EXPECT_TRUE(found) << json::serialize(r);
}

}  // namespace
}  // namespace kvm::sysinfo
