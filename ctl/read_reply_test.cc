#include "ctl/read_reply.h"

#include <gtest/gtest.h>

#include <random>

#include "protocol/base64.h"

namespace kvm {
namespace {

std::string RandomBytes(size_t n) {
  std::mt19937 rng(11);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

TEST(ReadReply, DecodesTheDataOfAnAgentReply) {
  std::string data = RandomBytes(48384);
  std::string line =
      R"({"jsonrpc":"2.0","result":{"data":")" + Base64Encode(data) +
      R"(","size":10000000,"eof":false,"offset":96768,"length":48384},"id":9000000000000000017})";
  ReadReply reply;
  std::string bytes = "left over from an earlier chunk";
  ASSERT_TRUE(ParseReadReply(line, reply, bytes));
  EXPECT_EQ(reply.id, 9000000000000000017ull);
  EXPECT_EQ(reply.size, 10000000u);
  EXPECT_FALSE(reply.eof);
  EXPECT_TRUE(bytes == data);
}

TEST(ReadReply, FieldOrderAndUnknownMembersDoNotMatter) {
  std::string line =
      R"({"id":5,"result":{"eof":true,"extra":{"data":"AAAA","size":1,"list":[1,{"x":2}]},)"
      R"("size":3,"data":"Zm9v"},"jsonrpc":"2.0","other":[null,1.5,-2]})";
  ReadReply reply;
  std::string bytes;
  ASSERT_TRUE(ParseReadReply(line, reply, bytes));
  EXPECT_EQ(reply.id, 5u);
  EXPECT_EQ(reply.size, 3u);  // not the nested "size"
  EXPECT_TRUE(reply.eof);
  EXPECT_EQ(bytes, "foo");  // not the nested "data"
}

TEST(ReadReply, EscapedBase64IsDecodedToo) {
  // JSON may escape '/' ("\/"); a long escaped string reaches the handler in several parts.
  std::string data = RandomBytes(30000);
  std::string escaped;
  for (char c : Base64Encode(data)) {
    if (c == '/') escaped += '\\';
    escaped += c;
  }
  ReadReply reply;
  std::string bytes;
  ASSERT_TRUE(ParseReadReply(
      R"({"id":1,"result":{"data":")" + escaped + R"(","size":30000,"eof":true}})", reply, bytes));
  EXPECT_TRUE(bytes == data);
}

TEST(ReadReply, AnythingElseIsLeftToTheGeneralPath) {
  ReadReply reply;
  std::string bytes;
  for (const char* line : {
           R"({"jsonrpc":"2.0","error":{"code":-32001,"message":"no"},"id":3})",
           R"({"id":3,"error":{"code":-32004},"result":{"data":"Zm9v","size":3,"eof":true}})",
           R"({"id":3,"result":{"size":3,"type":"file","sha256":"ab"}})",  // file_stat
           R"({"id":3,"result":{"data":"Zm9v!","size":3,"eof":true}})",    // invalid base64
           R"({"id":3,"result":{"data":"Zm9v","size":3}})",                // no eof
           R"({"result":{"data":"Zm9v","size":3,"eof":true}})",            // no id
           R"({"id":"3","result":{"data":"Zm9v","size":3,"eof":true}})",   // id not a number
           R"({"id":3,"result":{"data":"Zm9v","size":-3,"eof":true}})",    // negative size
           R"({"id":3,"result":{"data":"Zm9v","size":3,"eof":true})",      // truncated
           R"({"id":3,"result":{"data":"Zm9v","size":3,"eof":true}} x)",   // trailing text
           R"([{"id":3,"result":{"data":"Zm9v","size":3,"eof":true}}])",   // a batch
           R"({"id":3,"result":[{"data":"Zm9v","size":3,"eof":true}]})",   // result not an object
           R"({"id":3,"result":{"data":"Zm9v","data":"YQ==","size":3,"eof":true}})",  // twice
           R"({"id":3,"id":4,"result":{"data":"Zm9v","size":3,"eof":true}})",
           "",
       }) {
    EXPECT_FALSE(ParseReadReply(line, reply, bytes)) << line;
  }
}

}  // namespace
}  // namespace kvm
