// Ctrl-C (and SIGTERM, SIGHUP) during a long operation. The handlers only note the signal, so
// the operation stops at a safe point and cleans up after itself (removes a partial download,
// aborts an upload session, stops a guest command) instead of dying half-way.
#pragma once

#include <signal.h>

#include <stdexcept>

namespace kvm {

// Installs the handlers while it lives (without SA_RESTART, so a blocked poll or read returns
// EINTR and looks at the flag); restores the previous ones after. Not nested.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

 private:
  struct sigaction previous_[3];  // SIGINT, SIGTERM, SIGHUP as they were
};

// The signal noted since the scope began; 0 if none.
int PendingInterrupt();

class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal);
  int signal;
};

// Throws Interrupted when a signal was noted (never outside an InterruptScope).
void ThrowIfInterrupted();

// Blocks the interrupting signals in the calling thread, so they reach the thread that waits
// on the agent (helper threads call this first).
void BlockInterruptsInThisThread();

}  // namespace kvm
