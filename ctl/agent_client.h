// A blocking JSON-RPC client for one agent connection (a unix socket: the agent's --listen
// socket or the host end of a QEMU/libvirt virtio-serial channel).
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "protocol/line_framer.h"

namespace kvm {

// Could not talk to the agent at all (connect, I/O, timeout, malformed reply).
class ClientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller's mistake, found before anything goes out (an argument that is not UTF-8, so
// JSON cannot carry it; no socket given; a socket path too long): bad usage, exit 2.
class UsageError : public ClientError {
 public:
  using ClientError::ClientError;
};

// A path or argument that is not UTF-8: JSON cannot carry it, so it is refused before sending.
// Its own type so that a caller can fail just that file and go on with the rest.
class NotUtf8Error : public UsageError {
 public:
  using UsageError::UsageError;
};

// Throws NotUtf8Error naming `what` unless `text` is valid UTF-8.
void RequireUtf8(std::string_view text, std::string_view what);

// The agent's answer: either `result` or `error` (code, message, data).
struct CallResult {
  bool ok = false;
  boost::json::value result;
  int64_t error_code = 0;
  std::string error_message;
  boost::json::value error_data;
};

// Turns a reply object into a CallResult, moving the result out of `reply`; throws ClientError
// (quoting `raw`) when it has neither result nor error.
CallResult DecodeReply(boost::json::object& reply, std::string_view raw = {});

class AgentClient {
 public:
  // A longer line is a malformed reply: twice the largest max_message_size_kb (64 MiB).
  static constexpr size_t kMaxReplyLine = size_t{128} << 20;

  // Connects to a unix socket path; throws ClientError.
  AgentClient(const std::string& socket_path, std::chrono::milliseconds timeout);
  ~AgentClient();
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  // Sends one request and waits for the reply with its id, at most the timeout in all. Lines
  // with other ids (left over from an earlier client of a serial channel) are skipped. Throws
  // ClientError.
  CallResult Call(std::string_view method, const boost::json::object& params = {});
  // True when a request went out whose reply was not read (a Call that Interrupted ended).
  bool awaiting_reply() const { return pending_id_ != 0; }
  // Waits (timeout()) for that reply. Throws ClientError, also when none is awaited.
  CallResult AwaitReply();

  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  // Within an InterruptScope: a wait for the agent that a signal interrupts throws Interrupted
  // (ctl/interrupt.h) instead of going on waiting.
  void set_stop_on_interrupt(bool stop) { stop_on_interrupt_ = stop; }
  bool stop_on_interrupt() const { return stop_on_interrupt_; }

  // Raw access for tests and tools.
  void SendLine(std::string_view line);
  std::string ReadLine();  // throws ClientError on timeout or EOF
  // The same without a copy: the view is valid until the next ReadLine/ReadLineView.
  std::string_view ReadLineView();

 private:
  using Clock = std::chrono::steady_clock;
  std::string_view ReadLineBefore(Clock::time_point deadline);
  // For an error message: what was skipped while waiting for the reply ("" if nothing).
  std::string SkippedLines() const;

  int fd_ = -1;
  std::chrono::milliseconds timeout_;
  std::string buffer_;  // bytes read land in [filled_, size()): size() is capacity in use
  size_t filled_ = 0;   // buffer_[0, filled_) holds bytes read
  size_t start_ = 0;    // first unconsumed byte of buffer_
  size_t scanned_ = 0;  // buffer_[start_, scanned_) holds no newline
  uint64_t next_id_;
  uint64_t pending_id_ = 0;  // the request sent whose reply is not read yet; 0: none
  bool resynced_ = false;
  std::string first_skipped_;  // of the current call: the first line that was not its reply
  bool stop_on_interrupt_ = false;
};

// Sets a client's stop_on_interrupt for one scope and puts the old value back, also when a
// call in between throws.
class StopOnInterruptScope {
 public:
  StopOnInterruptScope(AgentClient& client, bool stop)
      : client_(client), saved_(client.stop_on_interrupt()) {
    client_.set_stop_on_interrupt(stop);
  }
  ~StopOnInterruptScope() { client_.set_stop_on_interrupt(saved_); }
  StopOnInterruptScope(const StopOnInterruptScope&) = delete;
  StopOnInterruptScope& operator=(const StopOnInterruptScope&) = delete;

 private:
  AgentClient& client_;
  bool saved_;
};

}  // namespace kvm
