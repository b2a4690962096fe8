// The virtio-serial port (/dev/virtio-ports/<channel_name>): one host at a time, and a kernel
// that reports hang-up and read()==0 for as long as no host has the socket open.
#pragma once

#include <memory>
#include <string>

#include "agent/core/dispatcher.h"
#include "agent/core/event_loop.h"
#include "agent/core/logger.h"
#include "agent/core/unique_fd.h"
#include "agent/transport/output_queue.h"
#include "protocol/line_framer.h"

namespace kvm {

// Keeps the port open across host disconnects (closing it loses host data) and waits with
// edge-triggered epoll, so an idle agent uses no CPU yet answers a reconnecting host at once.
// Each host connection is a "generation": replies meant for a host that left are dropped,
// never delivered to the next one. A missing or vanished device is retried on a timer.
class SerialPort {
 public:
  SerialPort(EventLoop& loop, Dispatcher& dispatcher, Logger& log, std::string path,
             int retry_seconds);
  ~SerialPort();

  void Start();
  void StopReading();
  bool idle() const { return outstanding_ == 0 && out_.empty(); }
  void set_retry_seconds(int seconds) { retry_seconds_ = seconds; }

 private:
  class HostSink;

  void TryOpen();
  void CloseAndRetry(const char* why, int err);
  void OnEvents(uint32_t events);
  void ReadAvailable();
  // read()==0 on a device that will never carry data again (hung-up tty, replaced node).
  bool DeviceGone() const;
  void HangUpSeen();
  void CheckHangUpLater();
  void HostConfirmed();
  void HostLeft();
  void Send(uint64_t generation, std::string reply, SentCallback on_sent);
  void FlushOutput();
  void UpdateInterest();
  // Data came since the last hang-up, and no read()==0 has been seen since.
  bool host_connected() const { return host_seen_ && !hangup_pending_; }

  EventLoop& loop_;
  Dispatcher& dispatcher_;
  Logger& log_;
  std::string path_;
  int retry_seconds_;
  UniqueFd fd_;
  LineFramer framer_;
  OutputQueue out_;
  std::shared_ptr<HostSink> sink_;  // the current host generation
  uint64_t generation_ = 0;
  size_t outstanding_ = 0;
  bool host_seen_ = false;       // data arrived since the last hang-up
  bool hangup_pending_ = false;  // read()==0 seen with replies pending; see HangUpSeen
  // The port has shown a connected host (an event without EPOLLHUP, or bytes taken) since the
  // last hang-up. Until it has, a read()==0 may only mean the host's arrival is not noted yet.
  bool host_confirmed_ = false;
  EventLoop::Clock::time_point hangup_since_{};
  bool started_ = false;  // Start() has made its first attempt: later failures only retry
  bool stopped_ = false;
  bool paused_ = false;
  bool in_read_ = false;
  uint32_t interest_ = 0;     // the epoll events watched now (see UpdateInterest)
  int last_open_error_ = -1;  // log a failing open once per distinct error, not every retry
  EventLoop::TimerId retry_timer_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace kvm
