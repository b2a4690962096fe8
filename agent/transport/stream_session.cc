#include "agent/transport/stream_session.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace kvm {
namespace {
// Unsent replies above this stop reading from a client that does not read (backpressure).
constexpr size_t kPauseAbove = 4 << 20;
constexpr size_t kResumeBelow = 1 << 20;
// A client's turn ends after this many reads or this much time, whichever comes first, and
// other clients are served before it goes on: one client pipelining thousands of requests
// delayed everyone else's ping by 150-275 ms (30000 get_network_info) when a turn was 16
// reads of 64 KiB. The clock is looked at every kLinesPerCheck requests.
constexpr int kReadBudget = 16;
constexpr auto kTurn = std::chrono::milliseconds(2);
constexpr int kLinesPerCheck = 32;
constexpr uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP | EPOLLET;
}  // namespace

StreamSession::StreamSession(EventLoop& loop, Dispatcher& dispatcher, Logger& log, UniqueFd fd,
                             std::string peer, std::function<void()> on_closed)
    : loop_(loop),
      dispatcher_(dispatcher),
      log_(log),
      fd_(std::move(fd)),
      peer_(std::move(peer)),
      on_closed_(std::move(on_closed)),
      framer_(dispatcher.config()->max_message_bytes()) {}

void StreamSession::Start() {
  auto self = shared_from_this();
  // No EPOLLOUT until a write comes up short: otherwise every reply the peer reads would wake
  // the loop once more for nothing (measured: ~0.8 extra epoll_wait per ping).
  loop_.Watch(fd_.get(), kReadEvents, [self](uint32_t events) { self->OnEvents(events); });
  LOG_DEBUG(log_, "client connected: %s", peer_.c_str());
}

void StreamSession::OnEvents(uint32_t events) {
  if (!fd_) return;
  if (events & EPOLLOUT) FlushOutput();
  if (fd_ && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) ReadAvailable();
  // The last replies to a half-closed peer often leave here, on EPOLLOUT, after its EOF was
  // read (ReadAvailable then returns at once): without this the connection stayed open.
  MaybeClose();
}

void StreamSession::ReadAvailable(bool drain) {
  read_scheduled_ = false;
  if (!fd_ || input_done_ || paused_) return;
  framer_.set_max_line(dispatcher_.config()->max_message_bytes());
  auto self = shared_from_this();
  in_read_ = true;
  auto turn_end = std::chrono::steady_clock::now() + kTurn;
  // Hands `data` to the dispatcher a few lines at a time; returns how much it took before the
  // turn ran out (or the client was paused or closed).
  auto dispatch = [&](std::string_view data) -> size_t {
    size_t used = 0;
    while (used < data.size()) {
      size_t end = used;
      for (int lines = 0; lines < kLinesPerCheck && end < data.size(); ++lines) {
        const void* nl = std::memchr(data.data() + end, '\n', data.size() - end);
        end =
            nl ? static_cast<size_t>(static_cast<const char*>(nl) - data.data()) + 1 : data.size();
      }
      framer_.Feed(
          data.substr(used, end - used),
          [&](std::string_view line) {
            ++outstanding_;
            dispatcher_.HandleLine(line, self);
          },
          [&] {
            ++outstanding_;
            dispatcher_.HandleOversized(self);
          });
      used = end;
      if (!fd_ || paused_) break;
      if (!drain && std::chrono::steady_clock::now() > turn_end) break;
    }
    return used;
  };
  auto yield = [&] {  // more is waiting; edge-triggered, so come back ourselves
    if (!fd_ || paused_) return;
    read_scheduled_ = true;
    loop_.Post([self] { self->ReadAvailable(); });
  };
  if (!held_.empty()) {
    held_.erase(0, dispatch(held_));
    if (!held_.empty() || !fd_ || paused_) {
      yield();
      in_read_ = false;
      FlushOutput();
      return;
    }
  }
  char buf[64 * 1024];
  int budget = kReadBudget;
  for (;;) {
    if (budget-- == 0 && !drain) {
      yield();
      break;
    }
    ssize_t n = ::read(fd_.get(), buf, sizeof buf);
    if (n > 0) {
      std::string_view data(buf, static_cast<size_t>(n));
      size_t used = dispatch(data);
      if (!fd_) {
        in_read_ = false;
        return;
      }
      if (used < data.size()) {  // the turn ran out or the client is paused: keep the rest
        held_.assign(data.substr(used));
        yield();
        break;
      }
      if (paused_) break;
      // Send this read's replies before reading again: a client waiting for them can send its
      // next request meanwhile, which the next read then finds without an epoll round trip.
      FlushOutput();
      if (!fd_) {
        in_read_ = false;
        return;
      }
      continue;
    }
    if (n == 0) {
      input_done_ = true;  // half-close: still answer what was asked
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      LOG_DEBUG(log_, "client %s read error: %s", peer_.c_str(), std::strerror(errno));
      in_read_ = false;
      Close();
      return;
    }
    break;
  }
  in_read_ = false;
  FlushOutput();
  MaybeClose();
}

void StreamSession::Finish(std::string reply, SentCallback on_sent) {
  --outstanding_;
  if (!fd_ || reply.empty()) {
    if (on_sent) on_sent();  // gone, or nothing to send
    if (!fd_) return;
  } else {
    out_.AppendLine(std::move(reply), std::move(on_sent));
  }
  if (out_.pending() > kPauseAbove) paused_ = true;
  if (!in_read_) {
    FlushOutput();
    MaybeClose();
  }
}

void StreamSession::FlushOutput() {
  if (!fd_ || out_.empty()) return;
  if (int err = out_.Flush(fd_.get()); err != 0) {
    LOG_DEBUG(log_, "client %s write error: %s", peer_.c_str(), std::strerror(err));
    Close();
    return;
  }
  if (out_.empty() == want_writable_) {
    want_writable_ = !out_.empty();
    loop_.Modify(fd_.get(), want_writable_ ? kReadEvents | EPOLLOUT : kReadEvents);
  }
  if (paused_ && out_.pending() < kResumeBelow) {
    paused_ = false;
    if (!read_scheduled_) {
      read_scheduled_ = true;
      auto self = shared_from_this();
      loop_.Post([self] { self->ReadAvailable(); });
    }
  }
}

void StreamSession::StopReading() {
  // Requests the client already sent are read and answered (with shutting_down, by then),
  // so a stop never leaves a request unanswered. While its in-flight requests finish, the
  // client's new requests are read and answered with shutting_down too; once nothing is
  // owed to it, the connection closes.
  stopping_ = true;
  if (!input_done_) ReadAvailable(/*drain=*/true);
  MaybeClose();
}

void StreamSession::MaybeClose() {
  if (fd_ && (input_done_ || stopping_) && held_.empty() && outstanding_ == 0 && out_.empty()) {
    Close();
  }
}

void StreamSession::Close() {
  if (!fd_) return;
  loop_.Unwatch(fd_.get());
  fd_.reset();
  out_.Clear();
  LOG_DEBUG(log_, "client disconnected: %s", peer_.c_str());
  // The callback may drop the last reference to this session: touch no member after it.
  auto on_closed = std::move(on_closed_);
  if (on_closed) on_closed();
}

}  // namespace kvm
