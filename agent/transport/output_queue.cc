#include "agent/transport/output_queue.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace kvm {
namespace {
constexpr int kMaxIov = 64;  // lines per writev; a flood of small replies takes several calls
}  // namespace

void OutputQueue::AppendLine(std::string line, std::function<void()> on_sent) {
  line += '\n';
  pending_ += line.size();
  lines_.push_back(Line{std::move(line), std::move(on_sent)});
}

int OutputQueue::Flush(int fd) {
  std::deque<std::function<void()>> done;
  auto run_done = [&] {
    for (auto& callback : done) callback();
  };
  while (!lines_.empty()) {
    iovec iov[kMaxIov];
    int count = 0;
    size_t total = 0;
    for (auto it = lines_.begin(); it != lines_.end() && count < kMaxIov && total < max_write_;
         ++it) {
      size_t skip = count == 0 ? offset_ : 0;
      size_t len = std::min(it->text.size() - skip, max_write_ - total);
      iov[count++] = {it->text.data() + skip, len};
      total += len;
    }
    ssize_t n =
        count == 1 ? ::write(fd, iov[0].iov_base, iov[0].iov_len) : ::writev(fd, iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      int err = errno;
      run_done();
      return err;
    }
    Consume(static_cast<size_t>(n), done);
  }
  run_done();
  return 0;
}

void OutputQueue::Consume(size_t n, std::deque<std::function<void()>>& done) {
  pending_ -= n;
  while (n > 0) {
    Line& front = lines_.front();
    size_t left = front.text.size() - offset_;
    if (n < left) {
      offset_ += n;
      return;
    }
    n -= left;
    if (front.on_sent) done.push_back(std::move(front.on_sent));
    lines_.pop_front();
    offset_ = 0;
  }
}

void OutputQueue::Clear() {
  auto dropped = std::move(lines_);
  lines_.clear();
  offset_ = 0;
  pending_ = 0;
  for (auto& line : dropped) {
    if (line.on_sent) line.on_sent();
  }
}

}  // namespace kvm
