// JSON-RPC 2.0 rules, checked through the real agent over a real unix socket.
#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <ctime>
#include <regex>

#include "tests/integration/test_util.h"

namespace kvm::test {
namespace {
namespace json = boost::json;

class JsonRpcRules : public ::testing::Test {
 protected:
  AgentProcess agent_;
};

TEST_F(JsonRpcRules, SeedsManualSocatPingWorksVerbatim) {
  RunResult r = RunProgram({"bash", "-c",
                            "SOCKET=" + agent_.socket_path() +
                                "; echo '{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}' | "
                                "socat - UNIX-CONNECT:$SOCKET"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  std::string out = r.out;
  ASSERT_TRUE(std::regex_match(
      out, m,
      std::regex(R"(\{"jsonrpc":"2.0","result":\{"pong":true,"timestamp":(\d+)\},"id":1\}\n)")))
      << out;
  EXPECT_NEAR(std::stoll(m[1]), static_cast<long long>(std::time(nullptr)), 5);
}

TEST_F(JsonRpcRules, GetAgentInfoDescribesThisBuild) {
  CallResult r = agent_.Call("get_agent_info");
  ASSERT_TRUE(r.ok) << r.error_message;
  const auto& info = r.result.as_object();
  EXPECT_EQ(info.at("name"), "kvmmanager-agent");
  EXPECT_EQ(info.at("protocol_version"), "1.0");
  EXPECT_EQ(info.at("platform").as_object().at("os"), "linux");
  bool has_ping = false;
  for (const auto& m : info.at("methods").as_array()) has_ping |= m == "ping";
  EXPECT_TRUE(has_ping);
  const auto& limits = info.at("limits").as_object();
  EXPECT_EQ(limits.at("max_message_size_kb"), 64);
  EXPECT_EQ(limits.at("max_command_timeout_seconds"), 60);  // from the test config
}

TEST_F(JsonRpcRules, UnknownMethodIsMethodNotFoundNamingIt) {
  auto reply = ParseJson(agent_.RoundTrip(Request("no_such_method", "7")));
  EXPECT_EQ(ErrorCodeOf(reply), -32601);
  EXPECT_EQ(reply.at("error").at("data").at("method"), "no_such_method");
  EXPECT_EQ(reply.at("error").at("data").at("kind"), "method_not_found");
  EXPECT_EQ(reply.at("id"), 7);
}

TEST_F(JsonRpcRules, IdsOfEveryAllowedTypeAreEchoedExactly) {
  for (const char* id : {"1", "0", "-5", "\"abc\"", "\"\"", "null", "18446744073709551615",
                         "-9223372036854775808", "1.5", "\"\\u00e9\\n\""}) {
    std::string reply = agent_.RoundTrip(Request("ping", id));
    std::string tail = std::string(",\"id\":") + id + "}";
    if (std::string(id) == "\"\\u00e9\\n\"") tail = ",\"id\":\"\xc3\xa9\\n\"}";
    EXPECT_TRUE(reply.size() > tail.size() &&
                reply.compare(reply.size() - tail.size(), tail.size(), tail) == 0)
        << "id " << id << " came back as: " << reply;
  }
}

TEST_F(JsonRpcRules, IdOfWrongTypeIsInvalidRequestWithNullId) {
  for (const char* id : {"{}", "[1]", "true"}) {
    auto reply = ParseJson(agent_.RoundTrip(Request("ping", id)));
    EXPECT_EQ(ErrorCodeOf(reply), -32600) << id;
    EXPECT_TRUE(reply.at("id").is_null()) << id;
  }
}

TEST_F(JsonRpcRules, NotificationsAreNeverAnsweredEvenOnError) {
  auto client = agent_.Connect();
  client->SendLine(Request("ping", ""));
  client->SendLine(Request("no_such_method", ""));
  client->SendLine(Request("ping", "", R"({"bogus":1})"));
  client->SendLine(Request("ping", "\"after\""));
  auto reply = ParseJson(client->ReadLine());
  EXPECT_EQ(reply.at("id"), "after");
  EXPECT_EQ(ErrorCodeOf(reply), 0);
}

TEST_F(JsonRpcRules, BatchIsAnsweredWithAnArrayOfNonNotificationReplies) {
  auto reply = ParseJson(agent_.RoundTrip("[" + Request("ping", "1") + "," + Request("ping", "") +
                                          "," + Request("nope", "2") + ",5," +
                                          Request("get_agent_info", "\"x\"") + "]"));
  ASSERT_TRUE(reply.is_array()) << json::serialize(reply);
  const auto& items = reply.as_array();
  ASSERT_EQ(items.size(), 4u);
  int seen = 0;
  for (const auto& item : items) {
    const auto& id = item.at("id");
    int64_t code = ErrorCodeOf(item);
    if (id == 1 && code == 0) seen |= 1;
    if (id == 2 && code == -32601) seen |= 2;
    if (id.is_null() && code == -32600) seen |= 4;
    if (id == "x" && code == 0) seen |= 8;
  }
  EXPECT_EQ(seen, 15);
}

TEST_F(JsonRpcRules, EmptyBatchIsOneInvalidRequest) {
  auto reply = ParseJson(agent_.RoundTrip("[]"));
  ASSERT_TRUE(reply.is_object());
  EXPECT_EQ(ErrorCodeOf(reply), -32600);
  EXPECT_TRUE(reply.at("id").is_null());
}

TEST_F(JsonRpcRules, AllNotificationBatchGetsNoReply) {
  auto client = agent_.Connect();
  client->SendLine("[" + Request("ping", "") + "," + Request("ping", "") + "]");
  client->SendLine(Request("ping", "9"));
  EXPECT_EQ(ParseJson(client->ReadLine()).at("id"), 9);
}

TEST_F(JsonRpcRules, GarbageThenValidRequestOnTheSameConnection) {
  auto client = agent_.Connect();
  client->SendLine("this is not json");
  client->SendLine("{\"jsonrpc\":\"2.0\",\"method\":");  // truncated
  client->SendLine(Request("ping", "3"));
  for (int i = 0; i < 2; ++i) {
    auto err = ParseJson(client->ReadLine());
    EXPECT_EQ(ErrorCodeOf(err), -32700);
    EXPECT_TRUE(err.at("id").is_null());
    EXPECT_EQ(err.at("error").at("data").at("kind"), "parse_error");
  }
  auto ok = ParseJson(client->ReadLine());
  EXPECT_EQ(ok.at("id"), 3);
  EXPECT_EQ(ok.at("result").at("pong"), true);
}

TEST_F(JsonRpcRules, InvalidUtf8NulAndDeepNestingAreParseErrors) {
  auto client = agent_.Connect();
  client->SendLine("{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":\"\xff\xfe\"}");
  std::string with_nul = R"({"jsonrpc":"2.0","method":"ping")";
  with_nul += '\0';
  with_nul += R"(,"id":1})";
  client->SendLine(with_nul);
  client->SendLine(std::string(60000, '['));
  client->SendLine(Request("ping", "4"));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ErrorCodeOf(ParseJson(client->ReadLine())), -32700) << i;
  EXPECT_EQ(ParseJson(client->ReadLine()).at("id"), 4);
}

TEST_F(JsonRpcRules, MalformedRequestObjectsAreInvalidRequest) {
  for (const char* line : {R"({"method":"ping","id":1})", R"({"jsonrpc":"2.0","id":1})",
                           R"({"jsonrpc":"2.0","method":"ping","params":"x","id":1})",
                           R"({"jsonrpc":2.0,"method":"ping","id":1})", R"("ping")", "42"}) {
    EXPECT_EQ(ErrorCodeOf(ParseJson(agent_.RoundTrip(line))), -32600) << line;
  }
}

TEST_F(JsonRpcRules, UnknownParamIsInvalidParams) {
  auto reply = ParseJson(agent_.RoundTrip(Request("ping", "1", R"({"verbose":true})")));
  EXPECT_EQ(ErrorCodeOf(reply), -32602);
  EXPECT_EQ(reply.at("error").at("data").at("param"), "verbose");
  // An empty params array means "no params".
  EXPECT_EQ(ErrorCodeOf(ParseJson(agent_.RoundTrip(Request("ping", "1", "[]")))), 0);
}

TEST_F(JsonRpcRules, CrLfAndBlankLinesAreTolerated) {
  auto client = agent_.Connect();
  client->SendLine("\r\n\n" + Request("ping", "5") + "\r");
  EXPECT_EQ(ParseJson(client->ReadLine()).at("id"), 5);
  // Lines of whitespace only are blank lines too (skipped, no parse error).
  client->SendLine("  \t \n \r\n\t\n" + Request("ping", "6"));
  EXPECT_EQ(ParseJson(client->ReadLine()).at("id"), 6);
}

TEST(JsonRpcLimits, OversizedLineIsRefusedWithoutKillingTheConnection) {
  AgentProcess::Options options;
  AgentProcess probe;  // only to build a default config with a sandbox
  json::object config = json::parse(probe.DefaultTestConfig()).as_object();
  config["max_message_size_kb"] = 1;
  options.config_json = json::serialize(config);
  AgentProcess agent(options);
  auto client = agent.Connect();
  client->SendLine(Request("ping", "1", R"({"pad":")" + std::string(5000, 'x') + "\"}"));
  client->SendLine(Request("ping", "2", R"({"pad":")" + std::string(900, 'x') + "\"}"));
  client->SendLine(Request("ping", "3"));
  auto too_large = ParseJson(client->ReadLine());
  EXPECT_EQ(ErrorCodeOf(too_large), -32002);
  EXPECT_TRUE(too_large.at("id").is_null());
  EXPECT_EQ(too_large.at("error").at("data").at("limit_bytes"), 1024);
  EXPECT_EQ(ErrorCodeOf(ParseJson(client->ReadLine())), -32602);  // fits; "pad" is unknown
  EXPECT_EQ(ParseJson(client->ReadLine()).at("id"), 3);
}

}  // namespace
}  // namespace kvm::test
