#include "agent/transport/output_queue.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace kvm {

void OutputQueue::AppendLine(std::string line, std::function<void()> on_sent) {
  if (buffer_.empty()) {
    buffer_ = std::move(line);  // offset_ and erased_ are 0 whenever buffer_ is empty
  } else {
    buffer_.append(line);
  }
  buffer_ += '\n';
  if (on_sent) on_sent_.emplace_back(erased_ + buffer_.size(), std::move(on_sent));
}

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
  RunSentCallbacks();
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    erased_ = 0;
    offset_ = 0;
  } else if (offset_ > (1 << 20) && offset_ * 2 > buffer_.size()) {
    buffer_.erase(0, offset_);  // don't let a slow reader keep already-sent bytes alive
    erased_ += offset_;
    offset_ = 0;
  }
  return 0;
}

void OutputQueue::RunSentCallbacks() {
  uint64_t sent = erased_ + offset_;
  while (!on_sent_.empty() && on_sent_.front().first <= sent) {
    auto callback = std::move(on_sent_.front().second);
    on_sent_.pop_front();
    callback();
  }
}

void OutputQueue::Clear() {
  buffer_.clear();
  offset_ = 0;
  erased_ = 0;
  auto dropped = std::move(on_sent_);
  on_sent_.clear();
  for (auto& [end, callback] : dropped) callback();
}

}  // namespace kvm
