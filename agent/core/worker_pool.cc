#include "agent/core/worker_pool.h"

#include <signal.h>

namespace kvm {

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& thread : threads_) thread.join();
}

void WorkerPool::Submit(std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(task));
    if (idle_ < queue_.size() && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { WorkerMain(); });
    }
  }
  // Outside the lock: a worker woken while we still held it would block on the mutex at once,
  // one more context switch per request.
  wake_.notify_one();
}

void WorkerPool::set_max_threads(size_t max_threads) {
  std::lock_guard lock(mutex_);
  max_threads_ = max_threads;
}

size_t WorkerPool::thread_count() const {
  std::lock_guard lock(mutex_);
  return threads_.size();
}

void WorkerPool::WorkerMain() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_;
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stopping and drained
    {
      auto task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
    }  // the task (and what it captured, e.g. a 64 KiB chunk) is freed outside the lock
    lock.lock();
  }
}

}  // namespace kvm
