// One client connection on a unix or vsock listener: its own framer, replies and lifetime.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "agent/core/dispatcher.h"
#include "agent/core/event_loop.h"
#include "agent/core/logger.h"
#include "agent/core/unique_fd.h"
#include "agent/transport/output_queue.h"
#include "protocol/line_framer.h"

namespace kvm {

class StreamSession : public ReplySink, public std::enable_shared_from_this<StreamSession> {
 public:
  StreamSession(EventLoop& loop, Dispatcher& dispatcher, Logger& log, UniqueFd fd, std::string peer,
                std::function<void()> on_closed);
  void Start();
  void Finish(std::string reply, SentCallback on_sent) override;
  // The agent stops: the connection closes once in-flight replies are written (requests that
  // arrive meanwhile are answered, with shutting_down).
  void StopReading();
  void Close();
  bool closed() const { return !fd_; }

 private:
  void OnEvents(uint32_t events);
  void ReadAvailable(bool drain = false);
  void FlushOutput();
  void MaybeClose();

  EventLoop& loop_;
  Dispatcher& dispatcher_;
  Logger& log_;
  UniqueFd fd_;
  std::string peer_;
  std::function<void()> on_closed_;
  LineFramer framer_;
  std::string held_;  // read but not yet framed: the client's turn ran out (see kTurn)
  OutputQueue out_;
  size_t outstanding_ = 0;   // lines handed to the dispatcher and not yet finished
  bool input_done_ = false;  // peer shut its write side
  bool stopping_ = false;    // the agent stops: close once nothing is owed to the peer
  bool paused_ = false;      // too many unsent replies: the peer is not reading
  bool in_read_ = false;     // batching reply writes while a read burst is processed
  bool read_scheduled_ = false;
  bool want_writable_ = false;  // EPOLLOUT is watched only while replies wait for the peer
};

}  // namespace kvm
