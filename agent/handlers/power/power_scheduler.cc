#include "agent/handlers/power/power_scheduler.h"

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/array.hpp>
#include <cerrno>
#include <cstring>
#include <exception>

#include "agent/core/unique_fd.h"
#include "protocol/errors.h"

namespace kvm::power {

struct Scheduler::Pending {
  Plan plan;
  int64_t delay_seconds = 0;
  Clock::time_point due;        // accepted + delay
  int64_t execute_at_unix = 0;  // for the host: wall-clock seconds of `due`, rounded up
  std::string cancel_notice;
  bool released = false;  // the reply has been sent (ReplySent)
  Clock::time_point released_at;
  bool cancelled = false;
  bool executing = false;
};

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    if (pending_ && !pending_->executing) {
      pending_->cancelled = true;
      if (log_)
        LOG_WARN(*log_, "agent stopping: scheduled %s dropped", ActionName(pending_->plan.action));
    }
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
}

Scheduler::Release::Release(Scheduler& scheduler, std::shared_ptr<Pending> pending)
    : scheduler_(scheduler),
      pending_(std::move(pending)),
      exceptions_(std::uncaught_exceptions()) {}

Scheduler::Release::~Release() {
  if (std::uncaught_exceptions() > exceptions_) scheduler_.Released(pending_, /*failed=*/true);
}

void Scheduler::ReplySent(const std::shared_ptr<Pending>& pending) {
  Released(pending, /*failed=*/false);
}

boost::json::object Scheduler::Describe(const Pending& p) const {
  boost::json::object o{{"action", ActionName(p.plan.action)},
                        {"method", p.plan.method},
                        {"state", p.executing ? "executing" : "scheduled"},
                        {"delay_seconds", p.delay_seconds},
                        {"execute_at", p.execute_at_unix}};
  return o;
}

Scheduler::Scheduled Scheduler::Schedule(Plan plan, std::chrono::seconds delay,
                                         std::string cancel_notice, Logger& log) {
  std::thread previous;
  Scheduled scheduled;
  {
    std::lock_guard lock(mutex_);
    log_ = &log;
    if (pending_) {
      const Pending& p = *pending_;
      // Cancelling is only offered while it can work: an executing action cannot be.
      throw RpcError(ErrorCode::kConflict,
                     std::string("A power action is already ") +
                         (p.executing ? "executing (" : "scheduled (") + ActionName(p.plan.action) +
                         (p.executing ? ") and can no longer be cancelled"
                                      : "); cancel it first with power_cancel"),
                     Describe(p));
    }
    auto pending = std::make_shared<Pending>();
    pending->plan = std::move(plan);
    pending->delay_seconds = delay.count();
    pending->due = Clock::now() + delay;
    auto wall = std::chrono::system_clock::now() + delay;
    pending->execute_at_unix =
        std::chrono::ceil<std::chrono::seconds>(wall.time_since_epoch()).count();
    pending->cancel_notice = std::move(cancel_notice);
    pending_ = pending;
    previous = std::move(worker_);  // its action is over (the slot was free)
    worker_ = std::thread([this, pending] { Run(pending); });
    scheduled.pending = pending;
    scheduled.execute_at_unix = pending->execute_at_unix;
  }
  if (previous.joinable()) previous.join();
  return scheduled;
}

void Scheduler::Released(const std::shared_ptr<Pending>& pending, bool failed) {
  {
    std::lock_guard lock(mutex_);
    pending->released = true;
    pending->released_at = Clock::now();
    if (failed && !pending->cancelled) {
      pending->cancelled = true;  // the host got an error, so nothing may happen
      if (pending_ == pending) pending_.reset();
    }
  }
  changed_.notify_all();
}

boost::json::object Scheduler::Cancel() {
  boost::json::object result;
  std::shared_ptr<Pending> pending;
  {
    std::lock_guard lock(mutex_);
    if (!pending_) {
      throw RpcError(ErrorCode::kNotFound, "No power action is scheduled", {});
    }
    if (pending_->executing) {
      throw RpcError(ErrorCode::kConflict,
                     std::string("The ") + ActionName(pending_->plan.action) +
                         " is already executing and can no longer be cancelled",
                     Describe(*pending_));
    }
    pending = std::move(pending_);
    pending->cancelled = true;
    result = Describe(*pending);
  }
  changed_.notify_all();
  result.erase("state");
  result["cancelled"] = true;
  int recipients = 0;
  if (!pending->cancel_notice.empty())
    recipients = BroadcastToTerminals(env_, pending->cancel_notice);
  result["message_recipients"] = recipients;
  if (log_) LOG_INFO(*log_, "power: scheduled %s cancelled", ActionName(pending->plan.action));
  return result;
}

void Scheduler::Run(std::shared_ptr<Pending> p) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return stopping_ || p->cancelled || p->released; });
  if (stopping_ || p->cancelled) return;
  Clock::time_point start = std::max(p->due, p->released_at + kReplyLead);
  changed_.wait_until(lock, start, [&] { return stopping_.load() || p->cancelled; });
  if (stopping_ || p->cancelled) return;
  p->executing = true;
  Plan plan = p->plan;
  Logger* log = log_;
  lock.unlock();

  LOG_WARN(*log, "power: executing %s via %s%s", ActionName(plan.action), plan.method.c_str(),
           env_.test_mode ? " (test mode)" : "");
  Outcome outcome = Execute(plan);

  lock.lock();
  if (!outcome.ok) {
    LOG_ERROR(*log, "power: %s via %s failed: %s", ActionName(plan.action), plan.method.c_str(),
              outcome.detail.c_str());
    if (pending_ == p) pending_.reset();
    return;
  }
  LOG_INFO(*log, "power: %s via %s started: %s", ActionName(plan.action), plan.method.c_str(),
           outcome.detail.c_str());
  // The system should go down now; refuse new actions meanwhile, but not forever.
  if (changed_.wait_for(lock, kExecutingHold, [&] { return stopping_.load(); })) return;
  LOG_WARN(*log, "power: %s via %s reported success but the system is still up after %llds",
           ActionName(plan.action), plan.method.c_str(),
           static_cast<long long>(kExecutingHold.count()));
  if (pending_ == p) pending_.reset();
}

Outcome Scheduler::Execute(const Plan& plan) {
  if (plan.method == "syscall") return ForcedReboot(env_, plan.action);
  return RunHelper(plan);
}

Outcome Scheduler::RunHelper(const Plan& plan) {
  int err_fd = -1;
  std::string error;
  pid_t pid = SpawnPlan(plan, &err_fd, &error);
  if (pid < 0) return {false, error};
  // The helper may leave children behind (a backgrounded sysv script); they become the
  // agent's, and whoever reaps orphans must look for them from now on.
  if (child_spawned_) child_spawned_();
  UniqueFd err(err_fd);
  std::string err_text;
  auto limit = Clock::now() + kHelperTimeout;
  int status = 0;
  bool exited = false;
  // Reads what the helper writes to stderr; returns false once nothing more is ready.
  auto read_err = [&](int timeout_ms) {
    if (!err) return false;
    pollfd pfd{err.get(), POLLIN, 0};
    if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
    char buffer[1024];
    ssize_t n = ::read(err.get(), buffer, sizeof buffer);
    if (n > 0) {
      if (err_text.size() < 2048) err_text.append(buffer, static_cast<size_t>(n));
      return true;
    }
    if (n == 0 || errno != EINTR) err.reset();
    return false;
  };
  while (!exited) {
    if (err) {
      read_err(100);
    } else {
      ::usleep(50 * 1000);
    }
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      exited = true;
    } else if (r < 0 && errno != EINTR) {
      return {false, std::string("waitpid: ") + std::strerror(errno)};
    } else if (stopping_) {
      // The agent is stopping, most likely because the shutdown has begun: do not wait.
      return {true, plan.argv[0] + " still running while the agent stops"};
    } else if (Clock::now() > limit) {
      return {false, plan.argv[0] + " did not finish within " +
                         std::to_string(kHelperTimeout.count()) + "s (left running)"};
    }
  }
  // What is left of stderr, without blocking on a grandchild that holds it open.
  while (read_err(0)) {
  }
  while (!err_text.empty() && (err_text.back() == '\n' || err_text.back() == '\r'))
    err_text.pop_back();
  std::string detail;
  for (const auto& a : plan.argv) detail += (detail.empty() ? "" : " ") + a;
  if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return {true, detail + " exited 0"};
  }
  detail += WIFEXITED(status) ? " exited " + std::to_string(WEXITSTATUS(status))
                              : " killed by signal " + std::to_string(WTERMSIG(status));
  if (!err_text.empty()) detail += ": " + err_text;
  return {false, detail};
}

}  // namespace kvm::power
