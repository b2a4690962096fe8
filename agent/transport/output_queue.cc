#include "agent/transport/output_queue.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace kvm {

int OutputQueue::Flush(int fd) {
  while (offset_ < buffer_.size()) {
    size_t chunk = std::min(buffer_.size() - offset_, max_write_);
    ssize_t n = ::write(fd, buffer_.data() + offset_, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return errno;
    }
    offset_ += static_cast<size_t>(n);
  }
  if (offset_ == buffer_.size()) {
    Clear();
  } else if (offset_ > (1 << 20) && offset_ * 2 > buffer_.size()) {
    buffer_.erase(0, offset_);  // don't let a slow reader keep already-sent bytes alive
    offset_ = 0;
  }
  return 0;
}

}  // namespace kvm
