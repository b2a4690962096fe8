#include "agent/core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

namespace kvm {

EventLoop::EventLoop()
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (!epoll_ || !wake_) throw std::system_error(errno, std::generic_category(), "epoll/eventfd");
  Watch(wake_.get(), EPOLLIN, [this](uint32_t) {
    uint64_t count;  // one read resets the whole counter
    [[maybe_unused]] ssize_t n = ::read(wake_.get(), &count, sizeof count);
  });
}

void EventLoop::Watch(int fd, uint32_t events, FdCallback callback) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    throw std::system_error(errno, std::generic_category(), "epoll_ctl ADD");
  }
  callbacks_[fd] = std::make_shared<FdCallback>(std::move(callback));
}

void EventLoop::Modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
}

void EventLoop::Unwatch(int fd) {
  if (callbacks_.erase(fd)) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

EventLoop::TimerId EventLoop::AddTimer(Clock::time_point when, Task task) {
  TimerId id = next_timer_++;
  timer_order_.emplace(when, id);
  timers_.emplace(id, std::make_pair(when, std::move(task)));
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  auto [first, last] = timer_order_.equal_range(it->second.first);
  for (auto order = first; order != last; ++order) {
    if (order->second == id) {
      timer_order_.erase(order);
      break;
    }
  }
  timers_.erase(it);
}

void EventLoop::Post(Task task) {
  bool was_empty;
  {
    std::lock_guard lock(posted_mutex_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(task));
  }
  // A non-empty queue already has a wake-up pending (RunPosted takes the whole queue), so
  // replies finishing in a burst cost one eventfd write and one loop wake-up, not one each.
  if (!was_empty) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
}

void EventLoop::RunTimers() {
  if (timer_order_.empty()) return;  // no clock read: under TCG it can be a costly system call
  auto now = Clock::now();
  while (!timer_order_.empty() && timer_order_.begin()->first <= now) {
    TimerId id = timer_order_.begin()->second;
    timer_order_.erase(timer_order_.begin());
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;
    Task task = std::move(it->second.second);
    timers_.erase(it);
    task();
  }
}

void EventLoop::RunPosted() {
  std::vector<Task> tasks;
  {
    std::lock_guard lock(posted_mutex_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) task();
}

void EventLoop::Run() {
  running_ = true;
  epoll_event events[64];
  while (running_) {
    int timeout_ms = -1;
    if (!timer_order_.empty()) {
      auto wait = timer_order_.begin()->first - Clock::now();
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
      timeout_ms = ms < 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, 1 << 30));
    }
    int n = ::epoll_wait(epoll_.get(), events, 64, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      auto it = callbacks_.find(events[i].data.fd);
      if (it == callbacks_.end()) continue;
      auto callback = it->second;  // keeps it alive if the callback unwatches itself
      (*callback)(events[i].events);
    }
    RunPosted();
    RunTimers();
  }
}

}  // namespace kvm
