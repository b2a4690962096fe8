#include "protocol/jsonrpc.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace kvm::jsonrpc {
namespace {
namespace json = boost::json;

ErrorCode ParseErrorCode(std::string_view line) {
  try {
    ParseLine(line);
  } catch (const RpcError& e) {
    return e.code();
  }
  return ErrorCode::kInternalError;
}

TEST(JsonRpcParse, RejectsSyntaxInvalidUtf8NulAndDeepNesting) {
  EXPECT_EQ(ParseErrorCode("{\"a\":"), ErrorCode::kParseError);
  EXPECT_EQ(ParseErrorCode("{} x"), ErrorCode::kParseError);
  EXPECT_EQ(ParseErrorCode("\"\xff\xfe\""), ErrorCode::kParseError);
  EXPECT_EQ(ParseErrorCode(std::string_view("{\"a\":\0}", 7)), ErrorCode::kParseError);
  EXPECT_EQ(ParseErrorCode(std::string(100000, '[')), ErrorCode::kParseError);
  EXPECT_NO_THROW(ParseLine(std::string(kMaxDepth, '[') + std::string(kMaxDepth, ']')));
}

TEST(JsonRpcValidate, AcceptsRequestAndNotification) {
  auto r =
      ValidateRequest(json::parse(R"({"jsonrpc":"2.0","method":"m","params":{"a":1},"id":"x"})"));
  ASSERT_TRUE(std::holds_alternative<Request>(r));
  auto& req = std::get<Request>(r);
  EXPECT_EQ(req.method, "m");
  EXPECT_EQ(req.id, "x");
  EXPECT_FALSE(req.is_notification());
  auto n = ValidateRequest(json::parse(R"({"jsonrpc":"2.0","method":"m"})"));
  EXPECT_TRUE(std::get<Request>(n).is_notification());
  auto null_id = ValidateRequest(json::parse(R"({"jsonrpc":"2.0","method":"m","id":null})"));
  EXPECT_FALSE(std::get<Request>(null_id).is_notification());
}

TEST(JsonRpcValidate, RejectsMalformedRequestsKeepingAValidId) {
  for (const char* bad :
       {R"(1)", R"({"method":"m","id":1})", R"({"jsonrpc":"1.0","method":"m","id":1})",
        R"({"jsonrpc":"2.0","method":5,"id":1})",
        R"({"jsonrpc":"2.0","method":"m","params":3,"id":1})",
        R"({"jsonrpc":"2.0","method":"m","params":[1],"id":1})",
        R"({"jsonrpc":"2.0","method":"m","extra":true,"id":1})"}) {
    auto r = ValidateRequest(json::parse(bad));
    ASSERT_TRUE(std::holds_alternative<InvalidRequest>(r)) << bad;
    EXPECT_EQ(std::get<InvalidRequest>(r).error.code(), ErrorCode::kInvalidRequest);
  }
  auto bad_id = ValidateRequest(json::parse(R"({"jsonrpc":"2.0","method":"m","id":{"a":1}})"));
  EXPECT_TRUE(std::get<InvalidRequest>(bad_id).id.is_null());
  // Found by tests/hostile: 1e999 parses as infinity, which would be echoed as bare Infinity.
  for (const char* huge : {"1e999", "-1e999"}) {
    auto inf_id = ValidateRequest(
        ParseLine(std::string(R"({"jsonrpc":"2.0","method":"m","id":)") + huge + "}"));
    ASSERT_TRUE(std::holds_alternative<InvalidRequest>(inf_id)) << huge;
    EXPECT_TRUE(std::get<InvalidRequest>(inf_id).id.is_null());
  }
  auto kept = ValidateRequest(json::parse(R"({"jsonrpc":"2.0","method":7,"id":42})"));
  EXPECT_EQ(std::get<InvalidRequest>(kept).id, 42);
}

TEST(JsonRpcValidate, BadParamsAndUnknownMemberReportWhicheverComesFirst) {
  auto detail = [](const char* text) {
    auto r = ValidateRequest(json::parse(text));
    return std::string(std::get<InvalidRequest>(r).error.data().at("detail").as_string());
  };
  EXPECT_EQ(detail(R"({"jsonrpc":"2.0","method":"m","x":1,"params":3,"id":1})"),
            "unknown member \"x\"");
  EXPECT_EQ(detail(R"({"jsonrpc":"2.0","method":"m","params":3,"x":1,"id":1})"),
            "\"params\" must be an object");
}

TEST(JsonRpcResponse, EchoesIdsExactly) {
  EXPECT_EQ(ResultResponse(json::value(7), json::value(true)),
            R"({"jsonrpc":"2.0","result":true,"id":7})");
  EXPECT_EQ(ResultResponse(json::parse("18446744073709551615"), nullptr),
            R"({"jsonrpc":"2.0","result":null,"id":18446744073709551615})");
  EXPECT_EQ(ResultResponse(json::parse("-9223372036854775808"), nullptr),
            R"({"jsonrpc":"2.0","result":null,"id":-9223372036854775808})");
  EXPECT_EQ(ResultResponse(json::parse("1.5"), nullptr),
            R"({"jsonrpc":"2.0","result":null,"id":1.5})");
  EXPECT_EQ(ResultResponse(json::parse(R"("a\"b")"), nullptr),
            R"({"jsonrpc":"2.0","result":null,"id":"a\"b"})");
  EXPECT_EQ(ResultResponse(nullptr, 1), R"({"jsonrpc":"2.0","result":1,"id":null})");
  // Built in two steps around a result serialized elsewhere: the same line.
  std::string two_step = std::string(ResultResponseHead()) + "[true]";
  FinishResultResponse(two_step, json::parse(R"("x\ny")"));
  EXPECT_EQ(two_step, ResultResponse(json::parse(R"("x\ny")"), json::parse("[true]")));
}

TEST(JsonRpcResponse, ErrorCarriesCodeMessageAndKind) {
  auto text = ErrorResponse(json::value(3),
                            RpcError(ErrorCode::kPermissionDenied, "no", {{"policy", "read"}}));
  auto v = json::parse(text).as_object();
  EXPECT_EQ(v["error"].as_object()["code"], -32000);
  EXPECT_EQ(v["error"].as_object()["message"], "no");
  EXPECT_EQ(v["error"].as_object()["data"].as_object()["kind"], "permission_denied");
  EXPECT_EQ(v["error"].as_object()["data"].as_object()["policy"], "read");
  EXPECT_EQ(v["id"], 3);
}

}  // namespace
}  // namespace kvm::jsonrpc
