// A single-threaded epoll loop: fd readiness callbacks, timers, and tasks posted from other
// threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "agent/core/unique_fd.h"

namespace kvm {

class EventLoop {
 public:
  using Clock = std::chrono::steady_clock;
  using FdCallback = std::function<void(uint32_t events)>;
  using Task = std::function<void()>;
  using TimerId = uint64_t;

  EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Loop thread only. The callback may unwatch its own fd.
  void Watch(int fd, uint32_t events, FdCallback callback);
  void Modify(int fd, uint32_t events);
  void Unwatch(int fd);

  TimerId AddTimer(Clock::time_point when, Task task);
  TimerId AddTimer(Clock::duration after, Task task) {
    return AddTimer(Clock::now() + after, std::move(task));
  }
  void CancelTimer(TimerId id);

  // Any thread: runs `task` on the loop thread soon.
  void Post(Task task);

  // Runs until Stop(). Stop may be called from a callback on the loop thread.
  void Run();
  void Stop() { running_ = false; }

 private:
  void RunTimers();
  void RunPosted();

  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd for Post()
  bool running_ = false;
  std::unordered_map<int, std::shared_ptr<FdCallback>> callbacks_;
  std::multimap<Clock::time_point, TimerId> timer_order_;
  std::unordered_map<TimerId, std::pair<Clock::time_point, Task>> timers_;
  TimerId next_timer_ = 1;
  std::mutex posted_mutex_;
  std::vector<Task> posted_;
};

}  // namespace kvm
