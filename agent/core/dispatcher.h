// Turns request lines into replies: JSON-RPC validation, batches, method lookup, concurrency
// limit, per-request timeout. Transport-agnostic: replies go to a ReplySink.
#pragma once

#include <boost/json/value.hpp>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "agent/core/config.h"
#include "agent/core/event_loop.h"
#include "agent/core/logger.h"
#include "agent/core/method_table.h"
#include "agent/core/worker_pool.h"

namespace kvm {

// Runs on the loop thread once a reply has been handed to the kernel, or once it never will be
// (the peer left, or the reply was discarded). "Answer first" actions (power) wait for it.
using SentCallback = std::function<void()>;

// Where the reply to one line goes (one client connection, or one host session on the port).
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // Loop thread; called exactly once per line given to Dispatcher::HandleLine. `reply` is a
  // serialized JSON text without newline, or empty when nothing is to be sent (notifications).
  // `on_sent` may be empty; if not, the sink runs it exactly once (see SentCallback), unless
  // the agent is being torn down.
  virtual void Finish(std::string reply, SentCallback on_sent) = 0;
};

class Dispatcher {
 public:
  Dispatcher(EventLoop& loop, const MethodTable& methods, Logger& log,
             std::shared_ptr<const Config> config);
  ~Dispatcher();

  // Loop thread. Never blocks on a handler: worker methods complete later via the loop.
  void HandleLine(std::string_view line, const std::shared_ptr<ReplySink>& sink);
  // A line over max_message_size_kb was dropped by the framer: answer with an error (id null).
  void HandleOversized(const std::shared_ptr<ReplySink>& sink);

  void SetConfig(std::shared_ptr<const Config> config);
  std::shared_ptr<const Config> config() const { return config_; }

  // From now on new requests get kShuttingDown; in-flight ones go on.
  void BeginShutdown() { shutting_down_ = true; }
  // Tells every in-flight handler to give up (RequestContext::abandoned()).
  void AbandonAll();
  size_t in_flight() const { return in_flight_ + long_polls_in_flight_; }

 private:
  struct Job;
  struct Batch;
  // Where one message's reply goes: the sink, or the batch the message is part of. A struct,
  // not a std::function: a lambda holding a shared_ptr does not fit std::function's inline
  // buffer, and that cost a heap allocation per request.
  struct Completion {
    std::shared_ptr<ReplySink> sink;
    std::shared_ptr<Batch> batch;
    void operator()(std::string reply, SentCallback on_sent) const;
  };

  void ProcessMessage(boost::json::value&& message, Completion done);
  void StartWorker(std::string method, const MethodSpec& spec, boost::json::object params,
                   boost::json::value id, bool notification, Completion done);
  void ArmTimeout(const std::shared_ptr<Job>& job);
  // Worker thread: the lane's next queued request, or empty after closing the lane.
  std::function<void()> NextInLane(const std::string& lane);

  EventLoop& loop_;
  const MethodTable& methods_;
  Logger& log_;
  std::shared_ptr<const Config> config_;
  // MethodSpec::serialize_by lanes with a request running; their queued requests wait in
  // arrival order for the worker that runs the lane. Declared before pool_ so that they
  // outlive the workers, which use them until the pool has joined.
  std::mutex lanes_mutex_;
  std::unordered_map<std::string, std::deque<std::function<void()>>> lanes_;
  WorkerPool pool_;
  size_t in_flight_ = 0;             // worker requests but long-polls: max_concurrent_requests
  size_t long_polls_in_flight_ = 0;  // RunMode::kLongPoll requests: kMaxLongPolls
  bool shutting_down_ = false;
  std::unordered_set<std::shared_ptr<Job>> jobs_;  // in flight, loop thread only
};

}  // namespace kvm
