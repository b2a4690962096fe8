#include "agent/transport/serial_port.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace kvm {
namespace {
constexpr size_t kMaxPortWrite = 32 * 1024;  // the port takes at most 32 KiB per write()
constexpr size_t kPauseAbove = 4 << 20;
constexpr size_t kResumeBelow = 1 << 20;
constexpr int kReadBudget = 16;
// How long replies wait for a host after the port reported a hang-up (see HangUpSeen).
constexpr auto kHangUpGrace = std::chrono::milliseconds(250);
constexpr auto kUnconfirmedHostWait = std::chrono::seconds(5);
}  // namespace

class SerialPort::HostSink : public ReplySink {
 public:
  HostSink(SerialPort* port, uint64_t generation, std::shared_ptr<bool> alive)
      : port_(port), generation_(generation), alive_(std::move(alive)) {}
  void Finish(std::string reply, SentCallback on_sent) override {
    if (*alive_) {
      port_->Send(generation_, std::move(reply), std::move(on_sent));
    } else if (on_sent) {
      on_sent();
    }
  }

 private:
  SerialPort* port_;
  uint64_t generation_;
  std::shared_ptr<bool> alive_;  // false once the SerialPort is gone
};

SerialPort::SerialPort(EventLoop& loop, Dispatcher& dispatcher, Logger& log, std::string path,
                       int retry_seconds)
    : loop_(loop),
      dispatcher_(dispatcher),
      log_(log),
      path_(std::move(path)),
      retry_seconds_(retry_seconds),
      framer_(dispatcher.config()->max_message_bytes()),
      out_(kMaxPortWrite) {}

SerialPort::~SerialPort() {
  *alive_ = false;
  if (retry_timer_) loop_.CancelTimer(retry_timer_);
  if (fd_) loop_.Unwatch(fd_.get());
}

void SerialPort::Start() {
  // Anything but a character device (a regular file, a directory) can never be served: say
  // so at start-up rather than fail later in epoll with EPERM.
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && !S_ISCHR(st.st_mode)) {
    throw std::runtime_error(path_ + " is not a character device (a virtio-serial port or tty)");
  }
  TryOpen();
  started_ = true;
}

void SerialPort::StopReading() {
  stopped_ = true;
  if (retry_timer_) {
    loop_.CancelTimer(retry_timer_);
    retry_timer_ = 0;
  }
}

void SerialPort::TryOpen() {
  retry_timer_ = 0;
  if (stopped_) return;
  int fd = ::open(path_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err != last_open_error_) {
      LOG_WARN(log_, "cannot open %s: %s; retrying every %d s (logged once)", path_.c_str(),
               std::strerror(err), retry_seconds_);
      last_open_error_ = err;
    }
    retry_timer_ = loop_.AddTimer(std::chrono::seconds(retry_seconds_), [this] { TryOpen(); });
    return;
  }
  fd_.reset(fd);
  last_open_error_ = -1;
  framer_.Reset();
  out_.Clear();
  host_seen_ = false;
  hangup_pending_ = false;
  host_confirmed_ = false;
  ++generation_;
  sink_ = std::make_shared<HostSink>(this, generation_, alive_);
  interest_ = EPOLLIN | EPOLLET;
  try {
    loop_.Watch(fd_.get(), interest_, [this](uint32_t events) { OnEvents(events); });
  } catch (const std::system_error& e) {
    if (e.code().value() != EPERM) throw;
    // A character device without poll support (/dev/null, /dev/zero): it can never be served.
    fd_.reset();
    std::string why = path_ + " cannot be polled, so it is not a virtio-serial port or tty";
    if (!started_) throw std::runtime_error(why);
    if (last_open_error_ != EPERM)
      LOG_ERROR(log_, "%s; retrying every %d s", why.c_str(), retry_seconds_);
    last_open_error_ = EPERM;
    retry_timer_ = loop_.AddTimer(std::chrono::seconds(retry_seconds_), [this] { TryOpen(); });
    return;
  }
  LOG_INFO(log_, "serving %s", path_.c_str());
  ReadAvailable();  // the host may have written before we opened
}

void SerialPort::CloseAndRetry(const char* why, int err) {
  LOG_WARN(log_, "%s %s: %s; reopening every %d s", why, path_.c_str(), std::strerror(err),
           retry_seconds_);
  last_open_error_ = err;
  loop_.Unwatch(fd_.get());
  fd_.reset();
  ++generation_;  // nobody is left to read replies still being computed
  out_.Clear();
  if (!stopped_) {
    retry_timer_ = loop_.AddTimer(std::chrono::seconds(retry_seconds_), [this] { TryOpen(); });
  }
}

void SerialPort::OnEvents(uint32_t events) {
  if (!fd_) return;
  if (!(events & EPOLLHUP)) HostConfirmed();  // the port reports EPOLLHUP while no host is there
  if (events & EPOLLOUT) FlushOutput();
  if (fd_) ReadAvailable();
}

void SerialPort::UpdateInterest() {
  // Level-triggered input while a host is connected: a read that ends on a line boundary can go
  // straight back to epoll_wait (which returns at once if more is queued), saving the read that
  // would find EAGAIN, one system call per request. With no host the port is always readable
  // (read()==0), so level-triggering would spin: edge-triggered then, and while paused.
  // EPOLLOUT only while bytes wait, since the port wakes its waiters each time the host takes data.
  uint32_t want = EPOLLIN;
  if (!host_connected() || paused_) want |= EPOLLET;
  // While a hang-up is pending, EPOLLOUT also marks the host's arrival (the port turns writable).
  if (!out_.empty() || hangup_pending_) want |= EPOLLOUT;
  if (want == interest_) return;
  interest_ = want;
  loop_.Modify(fd_.get(), want);
}

bool SerialPort::DeviceGone() const {
  // A virtio-serial port reads 0 while no host is connected and stays usable. A tty that was
  // hung up (a pty whose other end closed, a modem line) reads 0 for ever and answers ioctls
  // with EIO: only opening the path again gets a live device, perhaps a new one under it.
  termios attrs;
  if (::tcgetattr(fd_.get(), &attrs) != 0 && errno == EIO) return true;
  struct stat open_one, named;
  return ::fstat(fd_.get(), &open_one) == 0 &&
         (::stat(path_.c_str(), &named) != 0 || named.st_rdev != open_one.st_rdev);
}

void SerialPort::HangUpSeen() {
  // A partial line belongs to whoever sent it; the next host starts clean.
  framer_.Reset();
  if (out_.empty() && outstanding_ == 0) {
    HostLeft();
    return;
  }
  // Replies are pending. The guest kernel can hand over a new host's first request before it
  // notes that the host connected, so read()==0 right after that request does not prove the
  // host left. Keep the replies for a short grace: a host that is there takes them (a write
  // or a read succeeds). At its end the port itself says whether a host is connected; if none
  // is, the replies are dropped as the host's leaving requires.
  if (hangup_pending_) return;
  hangup_pending_ = true;
  hangup_since_ = EventLoop::Clock::now();
  CheckHangUpLater();
}

void SerialPort::CheckHangUpLater() {
  auto alive = alive_;
  uint64_t generation = generation_;
  loop_.AddTimer(kHangUpGrace, [this, alive, generation] {
    if (!*alive || !hangup_pending_ || generation != generation_ || !fd_) return;
    // The port reports POLLHUP exactly while no host is connected.
    pollfd state{fd_.get(), 0, 0};
    if (::poll(&state, 1, 0) == 1 && !(state.revents & POLLHUP)) {
      HostConfirmed();
      UpdateInterest();
      return;
    }
    // Until the port has shown this host connected, its requests may simply have come ahead of
    // its arrival being noted, and on a loaded TCG host that gap is not bounded by the grace:
    // wait longer for it before dropping replies it is waiting for.
    if (!host_confirmed_ && EventLoop::Clock::now() - hangup_since_ < kUnconfirmedHostWait) {
      CheckHangUpLater();
      return;
    }
    HostLeft();
  });
}

void SerialPort::HostConfirmed() {
  host_confirmed_ = true;
  hangup_pending_ = false;
}

void SerialPort::HostLeft() {
  hangup_pending_ = false;
  host_confirmed_ = false;
  // Anything half-read or unsent belongs to the host that left; a new host must not see it.
  if (host_seen_ || framer_.buffered() || !out_.empty()) {
    LOG_DEBUG(log_, "host disconnected from %s", path_.c_str());
  }
  host_seen_ = false;
  framer_.Reset();
  out_.Clear();
  paused_ = false;
  ++generation_;
  sink_ = std::make_shared<HostSink>(this, generation_, alive_);
  if (fd_) UpdateInterest();
}

void SerialPort::ReadAvailable() {
  if (!fd_ || stopped_ || paused_) return;
  framer_.set_max_line(dispatcher_.config()->max_message_bytes());
  char buf[64 * 1024];
  in_read_ = true;
  int budget = kReadBudget;
  for (;;) {
    if (budget-- == 0) {
      auto alive = alive_;
      loop_.Post([this, alive] {
        if (*alive) ReadAvailable();
      });
      break;
    }
    ssize_t n = ::read(fd_.get(), buf, sizeof buf);
    if (n > 0) {
      host_seen_ = true;
      hangup_pending_ = false;  // a host is there after all
      auto sink = sink_;
      framer_.Feed(
          std::string_view(buf, static_cast<size_t>(n)),
          [&](std::string_view line) {
            ++outstanding_;
            dispatcher_.HandleLine(line, sink);
          },
          [&] {
            ++outstanding_;
            dispatcher_.HandleOversized(sink);
          });
      if (paused_) break;
      // Send this read's replies before reading again (the read that finds EAGAIN): the host
      // gets its answer one system call sooner, which under TCG is a measurable share of a ping.
      FlushOutput();
      if (!fd_) {  // a write error closed the port
        in_read_ = false;
        return;
      }
      if (framer_.buffered() == 0 && !(interest_ & EPOLLET)) break;  // see UpdateInterest
      continue;
    }
    if (n == 0) {  // no host has the socket open (it may never have)
      if (DeviceGone()) {
        in_read_ = false;
        CloseAndRetry("hang-up of", EIO);
        return;
      }
      HangUpSeen();
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;
    in_read_ = false;
    CloseAndRetry("read error on", errno);
    return;
  }
  in_read_ = false;
  FlushOutput();
}

void SerialPort::Send(uint64_t generation, std::string reply, SentCallback on_sent) {
  --outstanding_;
  if (!fd_ || generation != generation_ || reply.empty()) {
    if (on_sent) on_sent();  // the host it was for is gone, or nothing to send
    return;
  }
  out_.AppendLine(std::move(reply), std::move(on_sent));
  if (out_.pending() > kPauseAbove) paused_ = true;
  if (!in_read_) FlushOutput();
}

void SerialPort::FlushOutput() {
  if (!fd_) return;
  if (!out_.empty()) {
    size_t before = out_.pending();
    if (int err = out_.Flush(fd_.get()); err != 0) {
      CloseAndRetry("write error on", err);
      return;
    }
    if (out_.pending() < before) HostConfirmed();  // a host took the bytes
  }
  UpdateInterest();
  if (paused_ && out_.pending() < kResumeBelow) {
    paused_ = false;
    auto alive = alive_;
    loop_.Post([this, alive] {
      if (*alive) ReadAvailable();
    });
  }
}

}  // namespace kvm
