// Reply bytes waiting for a non-blocking fd to take them.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvm {

class OutputQueue {
 public:
  // `max_write` caps one write() call (a virtio-serial port takes at most 32 KiB per call).
  explicit OutputQueue(size_t max_write = SIZE_MAX) : max_write_(max_write) {}

  void AppendLine(std::string_view line) {
    buffer_.append(line);
    buffer_ += '\n';
  }
  // Writes until empty or EAGAIN. Returns 0, or the errno of a hard error.
  int Flush(int fd);
  size_t pending() const { return buffer_.size() - offset_; }
  bool empty() const { return pending() == 0; }
  void Clear() {
    buffer_.clear();
    offset_ = 0;
  }

 private:
  std::string buffer_;
  size_t offset_ = 0;
  size_t max_write_;
};

}  // namespace kvm
