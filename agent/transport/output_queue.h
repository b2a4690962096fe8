// Reply bytes waiting for a non-blocking fd to take them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>

namespace kvm {

// A queue of whole lines, each kept in its own string and written with writev: a 64 KiB
// file_read reply goes from the string it was serialized into to the socket, never copied
// into a shared buffer first (that copy, and the buffer's growth, were ~4% of the agent's CPU
// in a download).
class OutputQueue {
 public:
  // `max_write` caps one write() call (a virtio-serial port takes at most 32 KiB per call).
  explicit OutputQueue(size_t max_write = SIZE_MAX) : max_write_(max_write) {}
  ~OutputQueue() = default;  // callbacks still waiting are not run: the agent is going away
  OutputQueue(const OutputQueue&) = delete;
  OutputQueue& operator=(const OutputQueue&) = delete;

  // Queues `line` and a newline. `on_sent`, if set, runs once the fd has taken the line's last
  // byte, or when Clear() drops it unsent.
  void AppendLine(std::string line, std::function<void()> on_sent = {});
  // Writes until empty or EAGAIN. Returns 0, or the errno of a hard error.
  int Flush(int fd);
  size_t pending() const { return pending_; }
  bool empty() const { return pending_ == 0; }
  // Drops every unsent byte (the peer is gone); runs their on_sent callbacks.
  void Clear();

 private:
  struct Line {
    std::string text;  // ends with the newline
    std::function<void()> on_sent;
  };
  // Drops the first `n` pending bytes; callbacks of lines now fully sent go to `done`.
  void Consume(size_t n, std::deque<std::function<void()>>& done);

  std::deque<Line> lines_;
  size_t offset_ = 0;   // bytes of lines_.front() already written
  size_t pending_ = 0;  // bytes not yet written, over all lines
  size_t max_write_;
};

}  // namespace kvm
