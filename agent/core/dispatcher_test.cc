#include "agent/core/dispatcher.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

#include "protocol/errors.h"

namespace kvm {
namespace {
namespace json = boost::json;

class RecordingSink : public ReplySink {
 public:
  void Finish(std::string reply, SentCallback on_sent) override {
    replies.push_back(std::move(reply));
    if (on_sent) on_sent();
  }
  std::vector<std::string> replies;
};

class DispatcherTest : public ::testing::Test {
 protected:
  DispatcherTest() {
    log_.set_level(LogLevel::kOff);
    table_.Add("echo", RunMode::kInline,
               [](const json::object& p, RequestContext&) { return json::value(p); });
    table_.Add("slow", RunMode::kWorker, [](const json::object&, RequestContext& ctx) {
      while (!ctx.abandoned()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return json::value("late");
    });
    table_.Add("echo_later", RunMode::kWorker, [](const json::object& p, RequestContext&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return json::value(p);
    });
    table_.Add("storage", RunMode::kInline, [](const json::object&, RequestContext& ctx) {
      // A result bigger than the stack arena, built in the context's storage.
      json::array items(ctx.storage());
      for (int i = 0; i < 500; ++i) items.emplace_back("item number " + std::to_string(i));
      bool heap = ctx.storage().get() == json::storage_ptr().get();
      return json::value(json::object{{"heap", heap}, {"items", std::move(items)}});
    });
    table_.Add("work", RunMode::kWorker,
               [](const json::object&, RequestContext&) { return json::value(42); });
    table_.Add("fail", RunMode::kInline, [](const json::object&, RequestContext&) -> json::value {
      throw RpcError(ErrorCode::kNotFound, "nope");
    });
    Config c;
    c.request_timeout_seconds = 1;
    c.max_concurrent_requests = 2;
    dispatcher_ = std::make_unique<Dispatcher>(loop_, table_, log_, std::make_shared<Config>(c));
  }

  // Runs the loop until `sink` has `count` replies (or 5 s pass).
  void RunUntil(RecordingSink& sink, size_t count) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::function<void()> check = [&] {
      if (sink.replies.size() >= count || std::chrono::steady_clock::now() > deadline) {
        loop_.Stop();
      } else {
        loop_.AddTimer(std::chrono::milliseconds(2), check);
      }
    };
    check();
    loop_.Run();
  }

  Logger log_;
  EventLoop loop_;
  MethodTable table_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

TEST_F(DispatcherTest, InlineMethodAnswersSynchronously) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":1})", sink);
  ASSERT_EQ(sink->replies.size(), 1u);
  EXPECT_EQ(sink->replies[0], R"({"jsonrpc":"2.0","result":{"a":1},"id":1})");
}

// kInlineFirst: answered on the I/O thread when the handler can; when it throws WouldBlock
// there, the same request runs again on a worker, with the params it came with.
TEST_F(DispatcherTest, InlineFirstMethodAnswersInlineOrMovesToAWorkerWhenItWouldBlock) {
  std::vector<std::string> calls;  // "io:<param>" or "worker:<param>"
  std::mutex calls_mutex;
  table_.Add("maybe", RunMode::kInlineFirst,
             [&](const json::object& p, RequestContext& ctx) -> json::value {
               std::string where = ctx.on_io_thread() ? "io" : "worker";
               std::string arg(p.at("x").as_string());
               {
                 std::lock_guard lock(calls_mutex);
                 calls.push_back(where + ":" + arg);
               }
               if (ctx.on_io_thread() && arg == "cold") throw WouldBlock();
               return json::value(where);
             });
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"maybe","params":{"x":"warm"},"id":1})",
                          sink);
  ASSERT_EQ(sink->replies.size(), 1u);  // synchronously, no loop turn
  EXPECT_EQ(sink->replies[0], R"({"jsonrpc":"2.0","result":"io","id":1})");

  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"maybe","params":{"x":"cold"},"id":2})",
                          sink);
  EXPECT_EQ(sink->replies.size(), 1u);  // not answered inline
  RunUntil(*sink, 2);
  ASSERT_EQ(sink->replies.size(), 2u);
  EXPECT_EQ(sink->replies[1], R"({"jsonrpc":"2.0","result":"worker","id":2})");
  std::lock_guard lock(calls_mutex);
  EXPECT_EQ(calls, (std::vector<std::string>{"io:warm", "io:cold", "worker:cold"}));
}

// A worker method that throws WouldBlock (a bug) is an internal error, not a crash.
TEST_F(DispatcherTest, WouldBlockOnAWorkerIsAnInternalError) {
  table_.Add("confused", RunMode::kWorker,
             [](const json::object&, RequestContext&) -> json::value { throw WouldBlock(); });
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"confused","id":3})", sink);
  RunUntil(*sink, 1);
  ASSERT_EQ(sink->replies.size(), 1u);
  EXPECT_NE(sink->replies[0].find(R"("code":-32603)"), std::string::npos) << sink->replies[0];
}

TEST_F(DispatcherTest, NotificationsAreNeverAnswered) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"echo"})", sink);
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"nosuch"})", sink);
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"fail"})", sink);
  EXPECT_EQ(sink->replies, (std::vector<std::string>{"", "", ""}));
}

TEST_F(DispatcherTest, WorkerMethodAnswersThroughTheLoop) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"work","id":"w"})", sink);
  EXPECT_TRUE(sink->replies.empty());
  RunUntil(*sink, 1);
  ASSERT_EQ(sink->replies.size(), 1u);
  EXPECT_EQ(sink->replies[0], R"({"jsonrpc":"2.0","result":42,"id":"w"})");
}

// A short line is parsed into an arena on HandleLine's stack; a worker runs after HandleLine
// returned and other requests reused that stack, so it must get its own copy of params and id.
TEST_F(DispatcherTest, WorkerGetsItsParamsAndIdIntactAfterTheLineIsGone) {
  auto sink = std::make_shared<RecordingSink>();
  const std::string params =
      R"({"text":"a string well past the small-string size","list":[1,2.5,{"k":"nested value"}]})";
  const std::string id = R"("an id longer than fifteen characters")";
  {
    std::string line =
        R"({"jsonrpc":"2.0","method":"echo_later","params":)" + params + R"(,"id":)" + id + "}";
    dispatcher_->HandleLine(line, sink);
    std::fill(line.begin(), line.end(), 'x');
  }
  for (int i = 0; i < 20; ++i) {
    dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"echo","params":{"filler":")" +
                                std::string(100, 'f') + R"("},"id":0})",
                            sink);
  }
  RunUntil(*sink, 21);
  ASSERT_EQ(sink->replies.size(), 21u);
  EXPECT_EQ(sink->replies.back(),
            R"({"jsonrpc":"2.0","result":)" + params + R"(,"id":)" + id + "}");
}

TEST_F(DispatcherTest, InlineResultsUseTheRequestArenaForShortLinesAndTheHeapForLongOnes) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"storage","id":1})", sink);
  std::string padding(2000, ' ');  // a line past the arena's size limit
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"storage","id":2)" + padding + "}", sink);
  ASSERT_EQ(sink->replies.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    auto reply = json::parse(sink->replies[i]).as_object();
    auto& result = reply["result"].as_object();
    EXPECT_EQ(result["heap"], i == 1) << sink->replies[i].substr(0, 80);
    ASSERT_EQ(result["items"].as_array().size(), 500u);
    EXPECT_EQ(result["items"].as_array()[499], "item number 499");
  }
}

TEST_F(DispatcherTest, BusyBeyondMaxConcurrentAndTimeoutAfterRequestTimeout) {
  auto sink = std::make_shared<RecordingSink>();
  for (int i = 0; i < 3; ++i) {
    dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"slow","id":)" + std::to_string(i) + "}",
                            sink);
  }
  ASSERT_EQ(sink->replies.size(), 1u);  // the third is refused at once
  auto busy = json::parse(sink->replies[0]).as_object();
  EXPECT_EQ(busy["error"].as_object()["code"], static_cast<int>(ErrorCode::kBusy));
  EXPECT_EQ(busy["id"], 2);
  RunUntil(*sink, 3);
  ASSERT_EQ(sink->replies.size(), 3u);
  for (int i = 1; i < 3; ++i) {
    auto timeout = json::parse(sink->replies[i]).as_object();
    EXPECT_EQ(timeout["error"].as_object()["code"], static_cast<int>(ErrorCode::kTimeout));
  }
  // The abandoned handlers finish; their late results are not sent.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (dispatcher_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    loop_.AddTimer(std::chrono::milliseconds(5), [&] { loop_.Stop(); });
    loop_.Run();
  }
  EXPECT_EQ(dispatcher_->in_flight(), 0u);
  EXPECT_EQ(sink->replies.size(), 3u);
}

// Long-polls (exec_status waiting on a guest command) have their own limit: any number of them
// up to kMaxLongPolls never makes other requests busy.
TEST_F(DispatcherTest, LongPollsDoNotCountTowardMaxConcurrent) {
  table_.Add("wait", RunMode::kLongPoll, [](const json::object&, RequestContext& ctx) {
    while (!ctx.abandoned()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return json::value("waited");
  });
  auto sink = std::make_shared<RecordingSink>();
  for (size_t i = 0; i < kMaxLongPolls; ++i) {
    dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"wait","id":)" + std::to_string(i) + "}",
                            sink);
  }
  EXPECT_EQ(sink->replies.size(), 0u);
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"wait","id":"one too many"})", sink);
  ASSERT_EQ(sink->replies.size(), 1u);
  auto busy = json::parse(sink->replies[0]).as_object();
  EXPECT_EQ(busy["error"].as_object()["code"], static_cast<int>(ErrorCode::kBusy));
  EXPECT_EQ(busy["error"].as_object()["data"].as_object()["limit"], kMaxLongPolls);
  // Ordinary worker requests, as many as max_concurrent_requests (2), still run.
  for (int i = 0; i < 2; ++i) {
    dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"echo_later","params":{"n":)" +
                                std::to_string(i) + R"(},"id":"e)" + std::to_string(i) + "\"}",
                            sink);
  }
  RunUntil(*sink, 3);
  ASSERT_EQ(sink->replies.size(), 3u);
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_TRUE(json::parse(sink->replies[i]).as_object().contains("result")) << sink->replies[i];
  }
  RunUntil(*sink, 3 + kMaxLongPolls);  // the waits time out after request_timeout_seconds
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (dispatcher_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    loop_.AddTimer(std::chrono::milliseconds(5), [&] { loop_.Stop(); });
    loop_.Run();
  }
  EXPECT_EQ(dispatcher_->in_flight(), 0u);
}

// Records what the "ordered" method saw: which requests ran, in which order, and how many of
// one lane ran at once.
struct LaneLog {
  std::mutex mu;
  std::vector<std::string> started;  // "key:seq"
  std::map<std::string, int> running;
  int max_same_lane = 0;
  bool lanes_overlapped = false;  // another key's request ran while one of "a" did
};

class SerializedDispatcherTest : public DispatcherTest {
 protected:
  SerializedDispatcherTest() {
    table_.Add(
        "ordered", RunMode::kWorker,
        [this](const json::object& p, RequestContext&) {
          std::string key(p.at("key").as_string());
          {
            std::lock_guard lock(lanes.mu);
            lanes.started.push_back(key + ":" + std::to_string(p.at("seq").as_int64()));
            int now = ++lanes.running[key];
            lanes.max_same_lane = std::max(lanes.max_same_lane, now);
            for (auto& [other, n] : lanes.running) {
              if (other != key && n > 0) lanes.lanes_overlapped = true;
            }
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(p.at("ms").as_int64()));
          std::lock_guard lock(lanes.mu);
          --lanes.running[key];
          return json::value(p.at("seq"));
        },
        "key");
    Config c;
    c.request_timeout_seconds = 1;
    c.max_concurrent_requests = 8;
    dispatcher_ = std::make_unique<Dispatcher>(loop_, table_, log_, std::make_shared<Config>(c));
  }
  void Send(RecordingSink& sink, const std::string& key, int seq, int ms) {
    auto owner = std::shared_ptr<RecordingSink>(&sink, [](RecordingSink*) {});
    dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"ordered","id":)" + std::to_string(seq) +
                                R"(,"params":{"key":")" + key + R"(","seq":)" +
                                std::to_string(seq) + R"(,"ms":)" + std::to_string(ms) + "}}",
                            owner);
  }
  LaneLog lanes;
};

TEST_F(SerializedDispatcherTest, SameKeyRunsOneAtATimeInArrivalOrderOtherKeysAlongside) {
  RecordingSink sink;
  for (int seq = 1; seq <= 4; ++seq) Send(sink, "a", seq, 30);
  Send(sink, "b", 5, 30);
  RunUntil(sink, 5);
  ASSERT_EQ(sink.replies.size(), 5u);
  std::vector<std::string> a_order;
  for (auto& s : lanes.started) {
    if (s[0] == 'a') a_order.push_back(s);
  }
  EXPECT_EQ(a_order, (std::vector<std::string>{"a:1", "a:2", "a:3", "a:4"}));
  EXPECT_EQ(lanes.max_same_lane, 1);
  EXPECT_TRUE(lanes.lanes_overlapped) << "key b waited for key a's lane";
}

TEST_F(SerializedDispatcherTest, QueuedRequestThatTimedOutNeverRuns) {
  RecordingSink sink;
  Send(sink, "a", 1, 1500);  // holds the lane past the 1 s request timeout
  Send(sink, "a", 2, 0);     // waits behind it, and times out while waiting
  RunUntil(sink, 2);
  ASSERT_EQ(sink.replies.size(), 2u);
  for (auto& reply : sink.replies) {
    EXPECT_EQ(json::parse(reply).as_object()["error"].as_object()["code"],
              static_cast<int>(ErrorCode::kTimeout));
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (dispatcher_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    loop_.AddTimer(std::chrono::milliseconds(5), [&] { loop_.Stop(); });
    loop_.Run();
  }
  EXPECT_EQ(dispatcher_->in_flight(), 0u);
  std::lock_guard lock(lanes.mu);
  EXPECT_EQ(lanes.started, std::vector<std::string>{"a:1"});
}

TEST_F(SerializedDispatcherTest, DestroyedWhileALaneHasQueuedRequestsFinishesThemSafely) {
  RecordingSink sink;
  for (int seq = 1; seq <= 3; ++seq) Send(sink, "a", seq, 50);
  std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the lane's worker is busy
  dispatcher_.reset();  // joins the workers; the lane must still be there for them
  std::lock_guard lock(lanes.mu);
  EXPECT_EQ(lanes.started, (std::vector<std::string>{"a:1", "a:2", "a:3"}));
}

TEST_F(DispatcherTest, BatchAnswersOneArrayWithoutNotifications) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(
      R"([{"jsonrpc":"2.0","method":"echo","id":1},{"jsonrpc":"2.0","method":"echo"},)"
      R"({"jsonrpc":"2.0","method":"work","id":2},5])",
      sink);
  RunUntil(*sink, 1);
  ASSERT_EQ(sink->replies.size(), 1u);
  auto batch = json::parse(sink->replies[0]).as_array();
  EXPECT_EQ(batch.size(), 3u);
}

TEST_F(DispatcherTest, AllNotificationBatchGetsNoReply) {
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"([{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"x"}])",
                          sink);
  ASSERT_EQ(sink->replies.size(), 1u);
  EXPECT_EQ(sink->replies[0], "");
}

// A method that serializes its own result (file_read's base64 chunk) gets the same envelope,
// the request's id of any type, no reply as a notification, and its place in a batch; a
// method that writes some text and then throws answers with its error, not the text.
TEST_F(DispatcherTest, ResultTextBecomesTheReplyWithTheEnvelopeAndId) {
  table_.Add("text", RunMode::kInline, [](const json::object& p, RequestContext& ctx) {
    if (p.contains("fail")) {
      ctx.result_text() += R"({"partial":)";
      throw RpcError(ErrorCode::kNotFound, "gone");
    }
    ctx.result_text() += R"({"data":"QUJD","n":3})";
    return json::value("ignored");
  });
  table_.Add("text_worker", RunMode::kWorker, [](const json::object&, RequestContext& ctx) {
    ctx.result_text() += "[1,2]";
    return json::value();
  });
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"text","id":"a\"b"})", sink);
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"text"})", sink);
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"text","params":{"fail":1},"id":9})", sink);
  dispatcher_->HandleLine(
      R"([{"jsonrpc":"2.0","method":"text","id":1},{"jsonrpc":"2.0","method":"text_worker","id":2}])",
      sink);
  RunUntil(*sink, 4);
  ASSERT_EQ(sink->replies.size(), 4u);
  EXPECT_EQ(sink->replies[0], R"({"jsonrpc":"2.0","result":{"data":"QUJD","n":3},"id":"a\"b"})");
  EXPECT_EQ(sink->replies[1], "");
  auto error = json::parse(sink->replies[2]).as_object();
  EXPECT_EQ(error["error"].as_object()["code"], static_cast<int>(ErrorCode::kNotFound));
  EXPECT_EQ(sink->replies[2].find("partial"), std::string::npos) << sink->replies[2];
  auto batch = json::parse(sink->replies[3]).as_array();
  ASSERT_EQ(batch.size(), 2u);
  std::map<int64_t, json::value> by_id;
  for (auto& r : batch) by_id[r.as_object().at("id").as_int64()] = r.as_object().at("result");
  EXPECT_EQ(by_id[1], json::parse(R"({"data":"QUJD","n":3})"));
  EXPECT_EQ(by_id[2], json::parse("[1,2]"));
}

TEST_F(DispatcherTest, ExceptionsOtherThanRpcErrorBecomeInternalError) {
  table_.Add("throws", RunMode::kInline, [](const json::object&, RequestContext&) -> json::value {
    throw std::runtime_error("boom");
  });
  auto sink = std::make_shared<RecordingSink>();
  dispatcher_->HandleLine(R"({"jsonrpc":"2.0","method":"throws","id":1})", sink);
  auto reply = json::parse(sink->replies.at(0)).as_object();
  EXPECT_EQ(reply["error"].as_object()["code"], -32603);
}

}  // namespace
}  // namespace kvm
