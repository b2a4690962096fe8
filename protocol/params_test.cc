#include "protocol/params.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "protocol/errors.h"

namespace kvm {
namespace {
namespace json = boost::json;

json::object Obj(const char* text) { return json::parse(text).as_object(); }

ErrorCode CodeOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const RpcError& e) {
    return e.code();
  }
  return ErrorCode::kInternalError;
}

TEST(Params, ReadsTypedValues) {
  auto o = Obj(R"({"s":"x","i":-3,"u":7,"b":true,"a":["p","q"],"f":2.0})");
  Params p(o, {"s", "i", "u", "b", "a", "f"});
  EXPECT_EQ(p.RequiredString("s"), "x");
  EXPECT_EQ(p.OptionalInt("i", -10, 10), -3);
  EXPECT_EQ(p.OptionalUint("u"), 7u);
  EXPECT_EQ(p.OptionalUint("f"), 2u);
  EXPECT_EQ(p.OptionalBool("b"), true);
  EXPECT_EQ(p.OptionalStringArray("a")->size(), 2u);
  EXPECT_FALSE(p.OptionalString("missing").has_value());
}

TEST(Params, UnknownParamIsInvalidParams) {
  auto o = Obj(R"({"path":"x","bogus":1})");
  EXPECT_EQ(CodeOf([&] { Params p(o, {"path"}); }), ErrorCode::kInvalidParams);
}

TEST(Params, WrongTypesAndRangesAreInvalidParamsNamingTheParam) {
  auto o = Obj(R"({"s":1,"i":1.5,"u":-1,"b":"yes","a":[1],"big":1e30})");
  Params p(o, {"s", "i", "u", "b", "a", "big"});
  EXPECT_EQ(CodeOf([&] { p.RequiredString("s"); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.OptionalInt("i", 0, 10); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.OptionalUint("u"); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.OptionalBool("b"); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.OptionalStringArray("a"); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.OptionalUint("big"); }), ErrorCode::kInvalidParams);
  EXPECT_EQ(CodeOf([&] { p.RequiredString("absent"); }), ErrorCode::kInvalidParams);
  try {
    p.RequiredString("s");
  } catch (const RpcError& e) {
    EXPECT_EQ(e.data().at("param"), "s");
  }
}

}  // namespace
}  // namespace kvm
