// At most one power action at a time: scheduled with a delay, cancellable until it starts, and
// started only after the request that asked for it has been answered.
#pragma once

#include <atomic>
#include <boost/json/object.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/core/logger.h"
#include "agent/handlers/power/power_backend.h"

namespace kvm::power {

class Scheduler : public std::enable_shared_from_this<Scheduler> {
 public:
  using Clock = std::chrono::steady_clock;

  // The action starts no earlier than this after the reply was handed to the kernel
  // (RequestContext::AfterReplySent), so the host has a moment to read it.
  static constexpr std::chrono::milliseconds kReplyLead{100};
  // After a helper reported success the system should be going down; until this has passed,
  // new requests are refused as "executing". Then the slot is freed with a warning.
  static constexpr std::chrono::seconds kExecutingHold{120};
  // A helper still running after this is reported as failed (it is not killed).
  static constexpr std::chrono::seconds kHelperTimeout{90};

  // `child_spawned` runs after each helper is spawned (see ChildSpawned in register_all.h).
  explicit Scheduler(Environment env, std::function<void()> child_spawned = {})
      : env_(std::move(env)), child_spawned_(std::move(child_spawned)) {}
  ~Scheduler();  // cancels a scheduled action and waits for its thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const Environment& env() const { return env_; }

  struct Pending;
  // Destroyed during stack unwinding (the handler failed after scheduling), it cancels the
  // action: the host gets an error, so nothing may happen.
  class Release {
   public:
    Release(Scheduler& scheduler, std::shared_ptr<Pending> pending);
    ~Release();
    Release(const Release&) = delete;
    Release& operator=(const Release&) = delete;

   private:
    Scheduler& scheduler_;
    std::shared_ptr<Pending> pending_;
    int exceptions_;
  };

  struct Scheduled {
    std::shared_ptr<Pending> pending;
    int64_t execute_at_unix = 0;  // seconds, rounded up
  };
  // Takes the single slot (throws RpcError kConflict when taken). `cancel_notice` is broadcast
  // to terminals if the action is cancelled ("" = nothing).
  Scheduled Schedule(Plan plan, std::chrono::seconds delay, std::string cancel_notice, Logger& log);

  // Lets the action go ahead: its reply has been sent (or can no longer be: the host left, and
  // an accepted request stands). Nothing runs before this.
  void ReplySent(const std::shared_ptr<Pending>& pending);

  // Cancels the scheduled action; throws kNotFound (none) or kConflict (already executing).
  boost::json::object Cancel();

 private:
  void Run(std::shared_ptr<Pending> pending);
  void Released(const std::shared_ptr<Pending>& pending, bool failed);
  Outcome Execute(const Plan& plan);
  Outcome RunHelper(const Plan& plan);
  boost::json::object Describe(const Pending& pending) const;

  Environment env_;
  std::function<void()> child_spawned_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::shared_ptr<Pending> pending_;  // the slot; null when free
  std::thread worker_;                // runs the latest action; joined before the next one
  std::atomic<bool> stopping_{false};
  Logger* log_ = nullptr;  // the agent's logger (outlives the method table)
};

}  // namespace kvm::power
