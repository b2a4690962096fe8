// Long-lived state of the exec module: asynchronous handles, the children it has spawned,
// and the reaper for orphans that the agent inherits as child subreaper.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/handlers/exec/execution.h"

namespace kvm::exec {

// Bounds for exec_start handles.
inline constexpr size_t kMaxRunningHandles = 64;
inline constexpr size_t kMaxFinishedHandles = 64;
inline constexpr int64_t kDefaultRetainSeconds = 300;
inline constexpr int64_t kMaxRetainSeconds = 3600;

struct AsyncHandle {
  using Clock = std::chrono::steady_clock;
  uint64_t id = 0;
  std::string command;
  std::vector<std::string> args;
  std::unique_ptr<Execution> exec;
  std::thread monitor;
  Clock::time_point started;
  std::chrono::seconds retain{kDefaultRetainSeconds};
  std::atomic<int64_t> finished_at_ns{0};  // steady clock; 0 while running
  std::atomic<bool> stop{false};
};

class ExecState;

// One of the kMaxRunningHandles slots, taken before a command is spawned so that a refusal
// (busy) always means nothing ran. Given back at destruction unless Adopt took it over.
class HandleSlot {
 public:
  explicit HandleSlot(ExecState* state) : state_(state) {}
  HandleSlot(HandleSlot&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
  HandleSlot& operator=(HandleSlot&&) = delete;
  HandleSlot(const HandleSlot&) = delete;
  ~HandleSlot();

 private:
  friend class ExecState;
  ExecState* state_;
};

class ExecState {
 public:
  ExecState();
  ~ExecState();  // kills every running command

  // Wakes the orphan reaper: the agent spawned a child (here or in another module), and that
  // child may leave orphans the agent inherits as their subreaper.
  void NoteSpawn();
  // Children being waited for by someone: the orphan reaper leaves them alone.
  void AddChild(pid_t pid);
  void RemoveChild(pid_t pid);

  // Takes a running-handle slot; throws busy when kMaxRunningHandles are running or reserved.
  HandleSlot Reserve();
  // Takes ownership of an execution started under `slot`, which becomes its handle's.
  std::shared_ptr<AsyncHandle> Adopt(HandleSlot slot, std::unique_ptr<Execution> exec,
                                     std::string command, std::vector<std::string> args,
                                     std::chrono::seconds retain);
  // Throws not_found for unknown or expired handles.
  std::shared_ptr<AsyncHandle> Find(uint64_t id);
  std::vector<std::shared_ptr<AsyncHandle>> List();

 private:
  friend class HandleSlot;
  void Release(HandleSlot& slot);
  size_t Running() const;  // under mutex_
  void Expire();           // under mutex_
  // When the next finished handle is due to expire; nullopt if none. Under mutex_.
  std::optional<std::chrono::steady_clock::time_point> NextExpiry() const;
  void ReaperLoop();
  bool ReapOrphans();  // false when the agent has no children left to watch

  mutable std::mutex mutex_;
  std::map<uint64_t, std::shared_ptr<AsyncHandle>> handles_;
  uint64_t next_id_ = 1;
  size_t reserved_ = 0;  // HandleSlots taken whose command is not adopted yet
  std::set<pid_t> children_;
  // Unregistered zombies and when the reaper first saw them (reaper thread only).
  std::map<pid_t, std::chrono::steady_clock::time_point> zombie_seen_;

  std::mutex reaper_mutex_;
  std::condition_variable reaper_cv_;
  bool stopping_ = false;
  uint64_t spawns_ = 0;  // bumped by NoteSpawn so the reaper never misses one
  std::thread reaper_;
};

}  // namespace kvm::exec
