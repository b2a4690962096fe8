#include "agent/core/dispatcher.h"

#include <boost/json/array.hpp>
#include <boost/json/monotonic_resource.hpp>

#include <exception>
#include <optional>

#include "protocol/errors.h"
#include "protocol/jsonrpc.h"

namespace kvm {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

// See HandleLine: lines up to kArenaLine bytes parse into a kArenaBytes stack arena (a request
// takes about twice its text; a bigger one spills into heap blocks the arena frees at once).
constexpr size_t kArenaLine = 1024;
constexpr size_t kArenaBytes = 4096;

struct Dispatcher::Job {
  std::string method;
  json::value id;
  bool notification = false;
  bool long_poll = false;  // counted in long_polls_in_flight_, not in in_flight_
  Completion done;
  bool answered = false;               // loop thread only
  std::atomic<bool> timed_out{false};  // answered "timeout": a worker that has not begun skips it
  EventLoop::TimerId timer = 0;
  int64_t timeout_seconds = 0;
  std::shared_ptr<std::atomic<int64_t>> deadline_ns = std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<std::atomic<bool>> abandoned = std::make_shared<std::atomic<bool>>(false);
};

namespace {

// All of `callbacks` as one (empty when there are none).
SentCallback Combine(std::vector<std::function<void()>> callbacks) {
  if (callbacks.empty()) return {};
  if (callbacks.size() == 1) return std::move(callbacks.front());
  return [callbacks = std::move(callbacks)] {
    for (const auto& callback : callbacks) callback();
  };
}

// Runs a handler and turns whatever it does into the reply text ("" for notifications).
// `on_sent` receives the handler's AfterReplySent callbacks when it returned normally.
std::string Invoke(const MethodSpec& spec, const std::string& method, const json::object& params,
                   const json::value& id, bool notification, RequestContext& ctx, Logger& log,
                   SentCallback& on_sent) {
  auto internal_error = [&](const std::string& what) {
    LOG_ERROR(log, "method %s failed unexpectedly: %s", method.c_str(), what.c_str());
    return notification
               ? std::string()
               : jsonrpc::ErrorResponse(id, RpcError(ErrorCode::kInternalError,
                                                     "Internal error in " + method + ": " + what,
                                                     {{"method", method}}));
  };
  try {
    json::value result = spec.handler(params, ctx);
    on_sent = Combine(ctx.TakeAfterReplySent());
    if (notification) return std::string();
    if (ctx.has_result_text()) {
      std::string reply = ctx.TakeResultText();
      jsonrpc::FinishResultResponse(reply, id);
      return reply;
    }
    return jsonrpc::ResultResponse(id, result);
  } catch (const WouldBlock&) {
    if (ctx.on_io_thread()) throw;  // the dispatcher moves the request to a worker
    return internal_error("would block, on a worker");
  } catch (const RpcError& e) {
    return notification ? std::string() : jsonrpc::ErrorResponse(id, e);
  } catch (const std::exception& e) {
    return internal_error(e.what());
  }
}

}  // namespace

// Replies are gathered in order of completion; the batch answers once all are done.
struct Dispatcher::Batch {
  std::shared_ptr<ReplySink> sink;
  std::string joined;
  size_t remaining;
  std::vector<std::function<void()>> on_sent;  // the members', run when the batch is sent
};

Dispatcher::Dispatcher(EventLoop& loop, const MethodTable& methods, Logger& log,
                       std::shared_ptr<const Config> config)
    : loop_(loop),
      methods_(methods),
      log_(log),
      config_(std::move(config)),
      pool_(static_cast<size_t>(config_->max_concurrent_requests) + kMaxLongPolls) {}

Dispatcher::~Dispatcher() { AbandonAll(); }

void Dispatcher::SetConfig(std::shared_ptr<const Config> config) {
  config_ = std::move(config);
  pool_.set_max_threads(static_cast<size_t>(config_->max_concurrent_requests) + kMaxLongPolls);
}

void Dispatcher::AbandonAll() {
  for (const auto& job : jobs_) job->abandoned->store(true);
}

void Dispatcher::HandleOversized(const std::shared_ptr<ReplySink>& sink) {
  size_t limit = config_->max_message_bytes();
  sink->Finish(
      jsonrpc::ErrorResponse(
          nullptr, RpcError(ErrorCode::kTooLarge,
                            "Request line exceeds max_message_size_kb (" +
                                std::to_string(config_->max_message_size_kb) + " KiB); discarded",
                            {{"limit_bytes", limit}})),
      {});
}

void Dispatcher::HandleLine(std::string_view line, const std::shared_ptr<ReplySink>& sink) {
  // A short line (ping, the info calls: the common case) is parsed into an arena on this stack
  // frame, so a cheap request makes no heap allocation for its message and frees nothing
  // piece by piece. Everything that outlives this call copies what it keeps to the heap (see
  // StartWorker). Long lines (file chunks) go to the heap, which a worker then takes as is.
  alignas(16) unsigned char arena_bytes[kArenaBytes];
  std::optional<json::monotonic_resource> arena;
  json::storage_ptr storage;
  if (line.size() <= kArenaLine) storage = &arena.emplace(arena_bytes, sizeof arena_bytes);
  json::value message(storage);  // so the assignment below moves, not copies
  try {
    message = jsonrpc::ParseLine(line, storage);
  } catch (const RpcError& e) {
    sink->Finish(jsonrpc::ErrorResponse(nullptr, e), {});
    return;
  }
  if (!message.is_array()) {
    ProcessMessage(std::move(message), Completion{sink, nullptr});
    return;
  }
  json::array& batch = message.get_array();
  if (batch.empty()) {
    sink->Finish(jsonrpc::ErrorResponse(
                     nullptr, RpcError(ErrorCode::kInvalidRequest, "Invalid Request: empty batch",
                                       {{"detail", "empty batch"}})),
                 {});
    return;
  }
  auto state = std::make_shared<Batch>(Batch{sink, std::string(), batch.size(), {}});
  for (auto& element : batch) ProcessMessage(std::move(element), Completion{nullptr, state});
}

void Dispatcher::Completion::operator()(std::string reply, SentCallback on_sent) const {
  if (!batch) {
    sink->Finish(std::move(reply), std::move(on_sent));
    return;
  }
  if (!reply.empty()) {
    batch->joined += batch->joined.empty() ? '[' : ',';
    batch->joined += reply;
  }
  if (on_sent) batch->on_sent.push_back(std::move(on_sent));
  if (--batch->remaining == 0) {
    if (!batch->joined.empty()) batch->joined += ']';
    batch->sink->Finish(std::move(batch->joined), Combine(std::move(batch->on_sent)));
  }
}

void Dispatcher::ProcessMessage(json::value&& message, Completion done) {
  json::storage_ptr storage = message.storage();  // HandleLine's arena for a short line
  auto validated = jsonrpc::ValidateRequest(std::move(message));
  if (auto* invalid = std::get_if<jsonrpc::InvalidRequest>(&validated)) {
    done(jsonrpc::ErrorResponse(invalid->id, invalid->error), {});
    return;
  }
  auto& request = std::get<jsonrpc::Request>(validated);
  bool notification = request.is_notification();
  auto fail = [&](RpcError error) {
    done(notification ? std::string() : jsonrpc::ErrorResponse(request.id, error), {});
  };
  const MethodSpec* spec = methods_.Find(request.method);
  if (!spec) {
    fail(RpcError(ErrorCode::kMethodNotFound, "Method not found: " + request.method,
                  {{"method", request.method}}));
    return;
  }
  if (shutting_down_) {
    fail(
        RpcError(ErrorCode::kShuttingDown, "Agent is shutting down", {{"method", request.method}}));
    return;
  }
  if (spec->mode == RunMode::kInline || spec->mode == RunMode::kInlineFirst) {
    RequestContext ctx(config_, log_, nullptr, nullptr, std::move(storage));
    // Only a kInlineFirst handler may give up here (Invoke lets its WouldBlock through).
    ctx.set_on_io_thread(spec->mode == RunMode::kInlineFirst);
    SentCallback on_sent;
    try {
      std::string reply = Invoke(*spec, request.method, request.params, request.id, notification,
                                 ctx, log_, on_sent);
      done(std::move(reply), std::move(on_sent));
      return;
    } catch (const WouldBlock&) {
      // Needs the disk: on to a worker below, as if it had never been tried.
      LOG_DEBUG(log_, "%s would block on the I/O thread: runs on a worker", request.method.c_str());
    }
  }
  if (spec->mode == RunMode::kLongPoll) {
    if (long_polls_in_flight_ >= kMaxLongPolls) {
      fail(RpcError(ErrorCode::kBusy,
                    "Busy: " + std::to_string(long_polls_in_flight_) +
                        " long-polls in flight (exec_status, exec_input); retry later",
                    {{"limit", kMaxLongPolls}, {"method", request.method}}));
      return;
    }
  } else if (in_flight_ >= static_cast<size_t>(config_->max_concurrent_requests)) {
    fail(RpcError(ErrorCode::kBusy,
                  "Busy: " + std::to_string(in_flight_) +
                      " requests in flight (max_concurrent_requests); retry later",
                  {{"limit", config_->max_concurrent_requests}, {"method", request.method}}));
    return;
  }
  // Onto the heap unless they are there already (a copy only for a short, arena-parsed line).
  StartWorker(std::move(request.method), *spec,
              json::object(std::move(request.params), json::storage_ptr()),
              json::value(std::move(request.id), json::storage_ptr()), notification,
              std::move(done));
}

void Dispatcher::StartWorker(std::string method, const MethodSpec& spec, json::object params,
                             json::value id, bool notification, Completion done) {
  auto job = std::make_shared<Job>();
  job->method = method;
  job->id = id;
  job->notification = notification;
  job->long_poll = spec.mode == RunMode::kLongPoll;
  job->done = std::move(done);
  job->timeout_seconds = config_->request_timeout_seconds;
  job->deadline_ns->store(
      (Clock::now() + std::chrono::seconds(job->timeout_seconds)).time_since_epoch().count());
  ++(job->long_poll ? long_polls_in_flight_ : in_flight_);
  jobs_.insert(job);
  ArmTimeout(job);

  std::string lane;
  if (!spec.serialize_by.empty()) {
    if (const json::value* key = params.if_contains(spec.serialize_by); key && key->is_string()) {
      lane = spec.serialize_by + '=' + std::string(key->get_string());
    }
  }
  auto config = config_;
  auto task = [this, job, &spec, method = std::move(method), params = std::move(params),
               id = std::move(id), notification, config = std::move(config)]() mutable {
    std::string reply;
    SentCallback on_sent;
    // Already answered "timeout" while it waited for a worker or its lane: never run it late.
    if (!job->timed_out.load()) {
      RequestContext ctx(config, log_, job->deadline_ns, job->abandoned);
      reply = Invoke(spec, method, params, id, notification, ctx, log_, on_sent);
    }
    loop_.Post([this, job, reply = std::move(reply), on_sent = std::move(on_sent)]() mutable {
      --(job->long_poll ? long_polls_in_flight_ : in_flight_);
      jobs_.erase(job);
      if (job->answered) {  // already answered "timeout": this reply will never be sent
        if (on_sent) on_sent();
        return;
      }
      job->answered = true;
      loop_.CancelTimer(job->timer);
      job->done(std::move(reply), std::move(on_sent));
    });
  };
  if (lane.empty()) {
    pool_.Submit(std::move(task));
    return;
  }
  {
    std::lock_guard lock(lanes_mutex_);
    auto [it, idle] = lanes_.try_emplace(lane);
    if (!idle) {  // the worker running this lane takes it next
      it->second.push_back(std::move(task));
      return;
    }
  }
  pool_.Submit([this, lane = std::move(lane), task = std::move(task)]() mutable {
    // One worker drains the lane: consecutive requests (upload chunks) follow each other with
    // no hand-off through the loop thread in between.
    for (std::function<void()> next = std::move(task); next; next = NextInLane(lane)) next();
  });
}

std::function<void()> Dispatcher::NextInLane(const std::string& lane) {
  std::lock_guard lock(lanes_mutex_);
  auto it = lanes_.find(lane);
  if (it->second.empty()) {
    lanes_.erase(it);
    return {};
  }
  std::function<void()> next = std::move(it->second.front());
  it->second.pop_front();
  return next;
}

void Dispatcher::ArmTimeout(const std::shared_ptr<Job>& job) {
  Clock::time_point deadline{Clock::duration(job->deadline_ns->load())};
  job->timer = loop_.AddTimer(deadline, [this, job] {
    if (job->answered) return;
    Clock::time_point now_deadline{Clock::duration(job->deadline_ns->load())};
    if (Clock::now() < now_deadline) {  // the handler extended its deadline
      ArmTimeout(job);
      return;
    }
    job->answered = true;
    job->timed_out.store(true);
    job->abandoned->store(true);
    LOG_WARN(log_, "method %s timed out; answered with a timeout error", job->method.c_str());
    job->done(
        job->notification
            ? std::string()
            : jsonrpc::ErrorResponse(
                  job->id,
                  RpcError(ErrorCode::kTimeout, "Request timed out (" + job->method + ")",
                           {{"method", job->method}, {"timeout_seconds", job->timeout_seconds}})),
        {});
  });
}

}  // namespace kvm
