// Accepts stream clients on a unix socket (--listen unix:PATH) or AF_VSOCK port
// (--listen vsock:PORT); each connection is an independent session.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "agent/core/dispatcher.h"
#include "agent/core/event_loop.h"
#include "agent/core/logger.h"
#include "agent/core/unique_fd.h"
#include "agent/transport/stream_session.h"

namespace kvm {

struct ListenAddress {
  enum class Kind { kUnix, kVsock } kind;
  std::string path;   // kUnix
  uint32_t port = 0;  // kVsock
  std::string ToString() const;
};

// Parses "unix:/path" or "vsock:PORT"; throws std::invalid_argument with the reason.
ListenAddress ParseListenAddress(const std::string& spec);

class Listener {
 public:
  // Binds at once; throws std::system_error naming the address on failure.
  Listener(EventLoop& loop, Dispatcher& dispatcher, Logger& log, ListenAddress address);
  ~Listener();

  // Closes the listening socket (and removes a unix socket file); sessions finish what they
  // were asked and then close.
  void StopAccepting();
  size_t session_count() const { return sessions_.size(); }

 private:
  void Accept();
  void WatchForClients();  // Accept() when a client is waiting
  // Out of descriptors: stops watching the listener for a while, then tries again.
  void PauseAccepting(int error);
  void OnSessionClosed(uint64_t id);

  EventLoop& loop_;
  Dispatcher& dispatcher_;
  Logger& log_;
  ListenAddress address_;
  UniqueFd fd_;
  uint64_t next_session_ = 1;
  EventLoop::TimerId resume_timer_ = 0;  // set while accepting is paused
  bool out_of_fds_ = false;              // the pause was logged; cleared by the next accept
  std::map<uint64_t, std::shared_ptr<StreamSession>> sessions_;
};

}  // namespace kvm
