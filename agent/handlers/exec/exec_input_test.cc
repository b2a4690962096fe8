// exec_start with keep_stdin_open, fed by exec_input: through the real agent binary.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "agent/handlers/exec/exec_test_util.h"
#include "agent/handlers/exec/execution.h"

namespace kvm::exec {
namespace {

using namespace testing;
using AgentProcess = ReadyAgent;
using Clock = std::chrono::steady_clock;

json::object Start(AgentProcess& agent, const std::string& script, json::object extra = {}) {
  json::object params{{"command", "sh"}, {"args", json::array{"-c", script}}};
  params["keep_stdin_open"] = true;
  for (const auto& [k, v] : extra) params[k] = v;
  auto r = agent.Call("exec_start", params);
  EXPECT_TRUE(r.ok) << r.error_message;
  return r.ok ? r.result.as_object() : json::object{};
}

json::object Input(AgentClient& client, int64_t handle, std::string_view data, bool eof = false,
                   int64_t wait_ms = 0) {
  json::object params{{"handle", handle}, {"wait_ms", wait_ms}};
  if (!data.empty()) params["data"] = Base64Encode(data);
  if (eof) params["eof"] = true;
  auto r = client.Call("exec_input", params);
  EXPECT_TRUE(r.ok) << r.error_message;
  return r.ok ? r.result.as_object() : json::object{};
}

// Takes what the handle has produced so far; returns true once it has exited.
bool Collect(AgentClient& client, int64_t handle, std::string& out, int64_t wait_ms = 0) {
  auto r = client.Call("exec_status", {{"handle", handle}, {"wait_ms", wait_ms}});
  EXPECT_TRUE(r.ok) << r.error_message;
  if (!r.ok) return true;
  out += Text(r.result, "stdout");
  return r.result.at("exited").as_bool();
}

void CollectToExit(AgentClient& client, int64_t handle, std::string& out) {
  for (int i = 0; i < 1000; ++i) {
    if (Collect(client, handle, out, 1000)) return;
  }
  ADD_FAILURE() << "handle " << handle << " never exited";
}

std::string RandomBytes(size_t n) {
  std::mt19937_64 rng(42);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(ExecInput, StreamsMegabytesOfStdinWhileTheOutputIsCollected) {
  AgentProcess agent;
  auto client = agent.Connect();
  auto started = Start(agent, "cat", {{"max_output_bytes", 65536}});
  int64_t handle = started.at("handle").as_int64();
  size_t chunk = started.at("input_chunk_bytes").to_number<size_t>();
  EXPECT_EQ(chunk, 48384u);  // max_message_size_kb 64 less the envelope, as whole base64 groups
  std::string in = RandomBytes(3 << 20), out;
  size_t sent = 0;
  int refused = 0;
  while (sent < in.size()) {
    std::string_view piece = std::string_view(in).substr(sent, chunk);
    auto r = Input(*client, handle, piece);
    ASSERT_TRUE(r.at("stdin_open").as_bool());
    if (r.at("accepted").as_bool()) {
      sent += piece.size();
    } else {
      ++refused;
    }
    // Output is collected only when input is refused: cat blocks on its full stdout, stops
    // reading, and the input queue fills up; collecting is what lets it go on.
    if (!r.at("accepted").as_bool()) Collect(*client, handle, out);
  }
  EXPECT_TRUE(Input(*client, handle, "", true).at("accepted").as_bool());
  CollectToExit(*client, handle, out);
  EXPECT_EQ(out.size(), in.size());
  EXPECT_TRUE(out == in);
  EXPECT_GT(refused, 0);  // the bound was reached, and nothing was lost because of it
}

TEST(ExecInput, TheQueueIsBoundedWhenTheCommandDoesNotRead) {
  AgentProcess agent;
  auto client = agent.Connect();
  int64_t handle = Start(agent, "sleep 30").at("handle").as_int64();
  std::string piece(40000, 'x');
  json::object last;
  for (int i = 0; i < 200; ++i) {
    last = Input(*client, handle, piece);
    if (!last.at("accepted").as_bool()) break;
  }
  ASSERT_FALSE(last.at("accepted").as_bool());
  EXPECT_TRUE(last.at("stdin_open").as_bool());
  // The pipe holds 64 KiB; the agent queues the rest up to its bound plus one message.
  EXPECT_GE(last.at("buffered_bytes").to_number<size_t>(), kInputBufferBytes);
  EXPECT_LT(last.at("buffered_bytes").to_number<size_t>(), kInputBufferBytes + piece.size());
  // wait_ms waits for room that never comes, then answers.
  auto before = Clock::now();
  EXPECT_FALSE(Input(*client, handle, piece, false, 300).at("accepted").as_bool());
  EXPECT_GE(Clock::now() - before, std::chrono::milliseconds(250));
  ASSERT_TRUE(agent.Call("exec_kill", {{"handle", handle}, {"signal", "KILL"}}).ok);
  std::string out;
  CollectToExit(*client, handle, out);
  auto closed = Input(*client, handle, "more");
  EXPECT_FALSE(closed.at("accepted").as_bool());
  EXPECT_FALSE(closed.at("stdin_open").as_bool());
}

TEST(ExecInput, AWaitingInputIsAcceptedAsSoonAsTheCommandReads) {
  AgentProcess agent;
  auto client = agent.Connect();
  // Reads nothing for 0.5 s, then everything.
  int64_t handle = Start(agent, "sleep 0.5; cat >/dev/null").at("handle").as_int64();
  std::string piece(40000, 'x');
  while (Input(*client, handle, piece).at("accepted").as_bool()) {
  }
  auto before = Clock::now();
  auto r = Input(*client, handle, piece, false, 5000);
  EXPECT_TRUE(r.at("accepted").as_bool());
  EXPECT_LT(Clock::now() - before, std::chrono::milliseconds(4000));
  EXPECT_TRUE(Input(*client, handle, "", true).at("accepted").as_bool());
  std::string out;
  CollectToExit(*client, handle, out);
}

TEST(ExecInput, InitialInputEofAndTheCommandClosingStdin) {
  AgentProcess agent;
  auto client = agent.Connect();
  // `input` goes first, then exec_input; data and eof may come in one call.
  auto started = Start(agent, "wc -c", {{"input", Base64Encode("ab")}});
  int64_t handle = started.at("handle").as_int64();
  auto r = Input(*client, handle, "cde", true);
  EXPECT_TRUE(r.at("accepted").as_bool());
  EXPECT_FALSE(r.at("stdin_open").as_bool());  // nothing more is taken after eof
  EXPECT_FALSE(Input(*client, handle, "f").at("accepted").as_bool());
  std::string out;
  CollectToExit(*client, handle, out);
  EXPECT_EQ(out, "5\n");

  // A command that stops reading: more input is refused as closed, not as an error.
  handle = Start(agent, "head -c 3").at("handle").as_int64();
  EXPECT_TRUE(Input(*client, handle, "hello").at("accepted").as_bool());
  out.clear();
  CollectToExit(*client, handle, out);
  EXPECT_EQ(out, "hel");
  auto closed = Input(*client, handle, "again");
  EXPECT_FALSE(closed.at("accepted").as_bool());
  EXPECT_FALSE(closed.at("stdin_open").as_bool());
  EXPECT_EQ(closed.at("buffered_bytes").as_int64(), 0);
}

TEST(ExecInput, ACommandThatClosesStdinWhileRunningIsSeenAsClosed) {
  AgentProcess agent;
  auto client = agent.Connect();
  int64_t handle = Start(agent, "exec 0<&-; sleep 30").at("handle").as_int64();
  json::object r;
  for (int i = 0; i < 100; ++i) {
    r = Input(*client, handle, "", false, 0);
    if (!r.at("stdin_open").as_bool()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(r.at("stdin_open").as_bool());
  ASSERT_TRUE(agent.Call("exec_kill", {{"handle", handle}, {"signal", "KILL"}}).ok);
}

TEST(ExecInput, MisuseGetsClearErrors) {
  AgentProcess agent;
  auto plain = agent.Call("exec_start", {{"command", "sleep"}, {"args", json::array{"30"}}});
  ASSERT_TRUE(plain.ok);
  int64_t handle = plain.result.at("handle").as_int64();
  EXPECT_FALSE(plain.result.as_object().contains("input_chunk_bytes"));
  auto no_pipe = agent.Call("exec_input", {{"handle", handle}, {"data", "eA=="}});
  EXPECT_EQ(no_pipe.error_code, -32008);
  EXPECT_NE(no_pipe.error_message.find("keep_stdin_open"), std::string::npos);
  EXPECT_EQ(agent.Call("exec_input", {{"handle", 987654}, {"data", "eA=="}}).error_code, -32001);
  int64_t open = Start(agent, "cat").at("handle").as_int64();
  for (json::object bad :
       {json::object{{"handle", open}, {"data", "not base64!"}},
        json::object{{"handle", open}, {"data", 5}}, json::object{{"handle", open}, {"eof", "yes"}},
        json::object{{"handle", open}, {"wait_ms", 10001}},
        json::object{{"handle", open}, {"extra", 1}}, json::object{{"data", "eA=="}}}) {
    auto r = agent.Call("exec_input", bad);
    EXPECT_EQ(r.error_code, -32602) << json::serialize(bad);
  }
  // exec_command has no handle to feed: the param is unknown there.
  EXPECT_EQ(agent.Call("exec_command", {{"command", "true"}, {"keep_stdin_open", true}}).error_code,
            -32602);
  for (int64_t h : {handle, open}) {
    EXPECT_TRUE(agent.Call("exec_kill", {{"handle", h}, {"signal", "KILL"}}).ok);
  }
}

}  // namespace
}  // namespace kvm::exec
