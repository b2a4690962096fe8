// The running daemon: owns the event loop, the dispatcher and the transports, and reacts to
// SIGTERM/SIGINT (graceful stop) and SIGHUP (config reload).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/config.h"
#include "agent/core/dispatcher.h"
#include "agent/core/event_loop.h"
#include "agent/core/logger.h"
#include "agent/core/method_table.h"
#include "agent/options.h"
#include "agent/transport/listener.h"
#include "agent/transport/serial_port.h"

namespace kvm {

class Agent {
 public:
  Agent(AgentOptions options, Config config, Logger& log);
  ~Agent();

  // Binds listeners and starts the port; throws std::system_error / std::invalid_argument.
  // The caller must have blocked SIGTERM, SIGINT and SIGHUP in every thread.
  void Start();
  // Serves until a stop signal; returns the process exit code.
  int Run();

 private:
  void OnSignal();
  void Reload();
  void BeginStop(const char* why);
  void CheckStopped();

  AgentOptions options_;
  Logger& log_;
  EventLoop loop_;
  MethodTable methods_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unique_ptr<SerialPort> port_;
  UniqueFd signal_fd_;
  bool stopping_ = false;
  EventLoop::Clock::time_point stop_deadline_;
  bool abandoned_ = false;
};

// Applies the flags that override config keys (--log-level) and the log settings.
void ApplyLogSettings(const AgentOptions& options, const Config& config, Logger& log);

}  // namespace kvm
