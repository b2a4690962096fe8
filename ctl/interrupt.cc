#include "ctl/interrupt.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <iterator>
#include <string>

namespace kvm {
namespace {

constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};  // InterruptScope::previous_ has 3

// A signal handler can reach nothing but a global; lock-free, so safe to set from one.
std::atomic<int> g_pending{0};
static_assert(std::atomic<int>::is_always_lock_free);

void Note(int signal) { g_pending.store(signal); }

}  // namespace

InterruptScope::InterruptScope() {
  g_pending.store(0);
  struct sigaction sa {};
  sa.sa_handler = Note;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < std::size(kSignals); ++i) {
    ::sigaction(kSignals[i], nullptr, &previous_[i]);
    // Ignored on entry (a background job of a non-interactive shell ignores SIGINT): stays so.
    if (previous_[i].sa_handler != SIG_IGN) ::sigaction(kSignals[i], &sa, nullptr);
  }
}

InterruptScope::~InterruptScope() {
  for (size_t i = 0; i < std::size(kSignals); ++i) ::sigaction(kSignals[i], &previous_[i], nullptr);
}

int PendingInterrupt() { return g_pending.load(); }

Interrupted::Interrupted(int signal)
    : std::runtime_error("interrupted (SIG" + std::string(sigabbrev_np(signal)) + ")"),
      signal(signal) {}

void ThrowIfInterrupted() {
  if (int s = g_pending.load(); s != 0) throw Interrupted(s);
}

void BlockInterruptsInThisThread() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

}  // namespace kvm
