// The methods this agent serves: name -> handler, and how each one runs.
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/config.h"
#include "agent/core/logger.h"
#include "protocol/jsonrpc.h"

namespace kvm {

// What a handler may know about the request it serves. Handlers run on a worker thread (or,
// for kInline methods, on the I/O thread) and must not keep references past their return.
class RequestContext {
 public:
  using Clock = std::chrono::steady_clock;

  RequestContext(std::shared_ptr<const Config> config, Logger& log,
                 std::shared_ptr<std::atomic<int64_t>> deadline_ns,
                 std::shared_ptr<std::atomic<bool>> abandoned,
                 boost::json::storage_ptr storage = {})
      : config_(std::move(config)),
        log_(log),
        deadline_ns_(std::move(deadline_ns)),
        abandoned_(std::move(abandoned)),
        storage_(std::move(storage)) {}

  const Config& config() const { return *config_; }
  Logger& log() const { return log_; }
  // True while a kInlineFirst handler runs on the I/O thread: it must not wait for the disk
  // and throws WouldBlock instead.
  bool on_io_thread() const { return on_io_thread_; }
  void set_on_io_thread(bool value) { on_io_thread_ = value; }
  // Memory for building the result: for an inline method called with a short request, the
  // request's own stack arena (no heap traffic for a cheap reply); otherwise the heap. Either
  // way it lasts until the reply is written, and nothing allocated from it may be kept longer.
  const boost::json::storage_ptr& storage() const { return storage_; }

  // A method with its own, longer time bound (exec's timeout_seconds) moves the request
  // deadline so the dispatcher does not answer "timeout" before the method itself does.
  void ExtendDeadline(Clock::duration from_now);
  // True once the dispatcher has answered "timeout" or the agent is stopping; long handlers
  // should check it and give up early.
  bool abandoned() const { return abandoned_ && abandoned_->load(); }
  // Runs `callback` on the I/O thread once this request's reply has been handed to the kernel
  // for the peer, or once it never will be (peer gone, reply discarded after a timeout). Only
  // honoured when the handler returns normally; after a throw the callback is dropped.
  void AfterReplySent(std::function<void()> callback) {
    after_sent_.push_back(std::move(callback));
  }
  std::vector<std::function<void()>> TakeAfterReplySent() { return std::move(after_sent_); }

  // For a large result the handler serializes itself (file_read's base64 chunk): it appends
  // the result's JSON text here and its return value is ignored. The string already holds the
  // reply's head and becomes the reply line, so the payload is written once, straight into
  // the line, rather than into a json::value that is then copied and scanned for escapes.
  std::string& result_text() {
    if (!has_result_text_) {
      result_text_ = jsonrpc::ResultResponseHead();
      has_result_text_ = true;
    }
    return result_text_;
  }
  bool has_result_text() const { return has_result_text_; }
  std::string TakeResultText() { return std::move(result_text_); }

 private:
  std::shared_ptr<const Config> config_;
  Logger& log_;
  std::shared_ptr<std::atomic<int64_t>> deadline_ns_;
  std::shared_ptr<std::atomic<bool>> abandoned_;
  std::vector<std::function<void()>> after_sent_;
  boost::json::storage_ptr storage_;
  std::string result_text_;
  bool has_result_text_ = false;
  bool on_io_thread_ = false;
};

// Returns the result, or throws RpcError (any other exception becomes -32603).
using Handler =
    std::function<boost::json::value(const boost::json::object& params, RequestContext& ctx)>;

enum class RunMode {
  kInline,  // cheap and non-blocking: runs on the I/O thread, no thread hop (ping)
  kWorker,  // may block or take time: runs on a worker, counts toward max_concurrent_requests
  // Tried on the I/O thread first (ctx.on_io_thread()); where the handler would have to wait
  // (file_read: data not in the page cache, a path not in the dentry cache) it throws
  // WouldBlock and the request runs on a worker as kWorker. A hit saves two thread hand-offs.
  kInlineFirst,
  // Runs on a worker but mostly waits for something outside the agent's control (exec_status
  // and exec_input long-polling a guest command): counts toward its own limit,
  // kMaxLongPolls, not max_concurrent_requests, so clients waiting on their commands never
  // leave other requests busy.
  kLongPoll,
};

// Requests of kLongPoll methods running at once (one per running exec_start handle).
inline constexpr size_t kMaxLongPolls = 64;

// Thrown by a kInlineFirst handler on the I/O thread instead of blocking; nothing it did
// before must be visible (the request runs again from the start on a worker).
struct WouldBlock {};

struct MethodSpec {
  Handler handler;
  RunMode mode = RunMode::kWorker;
  // Worker methods: requests whose params hold the same string under this key run one at a
  // time, in arrival order (the chunks of one upload: no lock contention, no re-ordering).
  // Empty: requests run concurrently.
  std::string serialize_by;
};

class MethodTable {
 public:
  void Add(std::string name, RunMode mode, Handler handler, std::string serialize_by = {});
  const MethodSpec* Find(std::string_view name) const;
  const std::vector<std::string>& Names() const { return names_; }  // sorted

  // Work a module does once when the agent starts, with the startup config (e.g. removing
  // temp files a killed agent left behind). Run by the Agent before it serves requests.
  using StartHook = std::function<void(const Config& config, Logger& log)>;
  void AddStartHook(StartHook hook) { start_hooks_.push_back(std::move(hook)); }
  void RunStartHooks(const Config& config, Logger& log) const {
    for (const auto& hook : start_hooks_) hook(config, log);
  }

  // Keeps a module's long-lived state (exec sessions, upload sessions...) alive as long as
  // the table, so handlers can capture plain references to it.
  template <class T>
  T& Own(std::shared_ptr<T> state) {
    T& ref = *state;
    owned_.push_back(std::move(state));
    return ref;
  }

 private:
  // Hashed, looked up by string_view without building a string: every request does one Find.
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view name) const { return std::hash<std::string_view>{}(name); }
  };
  std::unordered_map<std::string, MethodSpec, NameHash, std::equal_to<>> methods_;
  std::vector<std::string> names_;  // sorted
  std::vector<std::shared_ptr<void>> owned_;
  std::vector<StartHook> start_hooks_;
};

}  // namespace kvm
