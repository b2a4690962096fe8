// Reply bytes waiting for a non-blocking fd to take them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <utility>

namespace kvm {

class OutputQueue {
 public:
  // `max_write` caps one write() call (a virtio-serial port takes at most 32 KiB per call).
  explicit OutputQueue(size_t max_write = SIZE_MAX) : max_write_(max_write) {}
  ~OutputQueue() = default;  // callbacks still waiting are not run: the agent is going away
  OutputQueue(const OutputQueue&) = delete;
  OutputQueue& operator=(const OutputQueue&) = delete;

  // Queues `line` and a newline. `on_sent`, if set, runs once the fd has taken the line's last
  // byte, or when Clear() drops it unsent.
  // `line` is taken by value: when nothing is queued its buffer becomes the queue's, so a
  // 64 KiB reply is not copied again.
  void AppendLine(std::string line, std::function<void()> on_sent = {});
  // Writes until empty or EAGAIN. Returns 0, or the errno of a hard error.
  int Flush(int fd);
  size_t pending() const { return buffer_.size() - offset_; }
  bool empty() const { return pending() == 0; }
  // Drops every unsent byte (the peer is gone); runs their on_sent callbacks.
  void Clear();

 private:
  void RunSentCallbacks();

  std::string buffer_;
  size_t offset_ = 0;
  size_t max_write_;
  uint64_t erased_ = 0;  // bytes erased from the front of buffer_ so far
  // (end of a line as an offset in the stream since the last Clear, its callback), in order.
  std::deque<std::pair<uint64_t, std::function<void()>>> on_sent_;
};

}  // namespace kvm
