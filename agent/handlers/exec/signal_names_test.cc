#include <gtest/gtest.h>
#include <signal.h>

#include <boost/json.hpp>

#include "agent/handlers/exec/execution.h"
#include "protocol/errors.h"

namespace kvm::exec {
namespace {

TEST(Signals, NamesAndNumbersParse) {
  EXPECT_EQ(ParseSignal("TERM"), SIGTERM);
  EXPECT_EQ(ParseSignal("SIGKILL"), SIGKILL);
  EXPECT_EQ(ParseSignal("usr1"), SIGUSR1);
  EXPECT_EQ(ParseSignal("9"), 9);
  EXPECT_EQ(ParseSignal("64"), 64);
  EXPECT_FALSE(ParseSignal("0"));
  EXPECT_FALSE(ParseSignal("65"));
  EXPECT_FALSE(ParseSignal("-9"));
  EXPECT_FALSE(ParseSignal("SIG"));
  EXPECT_FALSE(ParseSignal("BOGUS"));
  EXPECT_FALSE(ParseSignal(""));
  EXPECT_EQ(SignalName(SIGTERM), "SIGTERM");
  EXPECT_EQ(SignalName(SIGRTMIN + 1), "SIG" + std::to_string(SIGRTMIN + 1));
}

TEST(Signals, SignalParamTakesNamesOrNumbersAndRefusesTheRest) {
  EXPECT_EQ(SignalParam({}, SIGTERM), SIGTERM);
  EXPECT_EQ(SignalParam({{"signal", nullptr}}, SIGTERM), SIGTERM);
  EXPECT_EQ(SignalParam({{"signal", "HUP"}}, SIGTERM), SIGHUP);
  EXPECT_EQ(SignalParam({{"signal", 2}}, SIGTERM), SIGINT);
  for (boost::json::value bad : {boost::json::value(0), boost::json::value(1.5),
                                 boost::json::value("nope"), boost::json::value(true)}) {
    try {
      SignalParam({{"signal", bad}}, SIGTERM);
      ADD_FAILURE() << boost::json::serialize(bad) << " accepted";
    } catch (const RpcError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidParams);
    }
  }
}

}  // namespace
}  // namespace kvm::exec
