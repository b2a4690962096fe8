#include "agent/handlers/exec/exec_state.h"

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include "agent/core/file_util.h"
#include "agent/handlers/exec/proc_util.h"
#include "protocol/errors.h"

namespace kvm::exec {
namespace {

using Clock = std::chrono::steady_clock;
// How often orphans are looked for while the agent has children. With none, the reaper sleeps
// without a timeout (an idle agent has no periodic wake-ups) until the next spawn: exec's own,
// or another module's reported through NoteSpawn (power's helpers).
constexpr auto kReaperPeriod = std::chrono::seconds(2);

int64_t NowNs() { return Clock::now().time_since_epoch().count(); }

// Direct children of this process, from /proc/self/task/*/children (each thread's list).
std::vector<pid_t> ListChildren() {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc/self/task");
  if (!dir) return out;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    auto text = ReadSmallFile(std::string("/proc/self/task/") + entry->d_name + "/children");
    if (!text) continue;
    const char* p = text->data();
    const char* end = p + text->size();
    while (p < end) {
      pid_t pid;
      auto [next, ec] = std::from_chars(p, end, pid);
      if (ec == std::errc()) out.push_back(pid);
      p = next + 1;
    }
  }
  ::closedir(dir);
  return out;
}

}  // namespace

ExecState::ExecState() {
  // Orphans of a command (`sh -c 'sleep 1000 &'`) are re-parented to the agent instead of
  // init, so they stay findable, killable and are reaped here.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  reaper_ = std::thread([this] { ReaperLoop(); });
}

ExecState::~ExecState() {
  {
    std::lock_guard lock(reaper_mutex_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  reaper_.join();
  std::map<uint64_t, std::shared_ptr<AsyncHandle>> handles;
  {
    std::lock_guard lock(mutex_);
    handles.swap(handles_);
  }
  for (auto& [id, h] : handles) h->stop = true;
  for (auto& [id, h] : handles) {
    if (h->monitor.joinable()) h->monitor.join();
  }
}

void ExecState::AddChild(pid_t pid) {
  {
    std::lock_guard lock(mutex_);
    children_.insert(pid);
  }
  NoteSpawn();
}

void ExecState::NoteSpawn() {
  {
    std::lock_guard lock(reaper_mutex_);
    ++spawns_;
  }
  reaper_cv_.notify_all();
}

void ExecState::RemoveChild(pid_t pid) {
  std::lock_guard lock(mutex_);
  children_.erase(pid);
}

HandleSlot::~HandleSlot() {
  if (state_) state_->Release(*this);
}

void ExecState::Release(HandleSlot& slot) {
  std::lock_guard lock(mutex_);
  --reserved_;
  slot.state_ = nullptr;
}

size_t ExecState::Running() const {
  size_t n = 0;
  for (const auto& [id, h] : handles_) n += h->finished_at_ns == 0;
  return n;
}

HandleSlot ExecState::Reserve() {
  std::lock_guard lock(mutex_);
  Expire();
  // Checked and taken in one step: concurrent exec_starts cannot all pass the check and then
  // find the limit exceeded after their commands ran.
  if (size_t taken = Running() + reserved_; taken >= kMaxRunningHandles) {
    throw RpcError(ErrorCode::kBusy,
                   "Too many running exec_start handles (" + std::to_string(taken) + ")",
                   {{"limit", kMaxRunningHandles}});
  }
  ++reserved_;
  return HandleSlot(this);
}

std::shared_ptr<AsyncHandle> ExecState::Adopt(HandleSlot slot, std::unique_ptr<Execution> exec,
                                              std::string command, std::vector<std::string> args,
                                              std::chrono::seconds retain) {
  auto h = std::make_shared<AsyncHandle>();
  h->command = std::move(command);
  h->args = std::move(args);
  h->started = Clock::now();
  h->retain = retain;
  h->exec = std::move(exec);
  std::lock_guard lock(mutex_);
  // The slot becomes the handle's (it counts as running from now on).
  --reserved_;
  slot.state_ = nullptr;
  h->id = next_id_++;
  children_.insert(h->exec->pid());
  AsyncHandle* raw = h.get();
  h->monitor = std::thread([this, raw] {
    bool killed = false;
    while (!raw->exec->Pump(std::chrono::milliseconds(250))) {
      if (raw->stop && !killed) {
        raw->exec->Kill(SIGKILL);
        killed = true;
      }
    }
    RemoveChild(raw->exec->pid());
    // Last: once this is set, Expire() may join and free the handle.
    raw->finished_at_ns = NowNs();
  });
  handles_.emplace(h->id, h);
  NoteSpawn();
  return h;
}

void ExecState::Expire() {
  int64_t now = NowNs();
  std::vector<std::pair<int64_t, uint64_t>> finished;  // (finished_at, id)
  for (auto it = handles_.begin(); it != handles_.end();) {
    int64_t done = it->second->finished_at_ns;
    if (done != 0 &&
        now - done >
            std::chrono::duration_cast<std::chrono::nanoseconds>(it->second->retain).count()) {
      it->second->monitor.join();
      it = handles_.erase(it);
      continue;
    }
    if (done != 0) finished.emplace_back(done, it->first);
    ++it;
  }
  if (finished.size() > kMaxFinishedHandles) {
    std::sort(finished.begin(), finished.end());
    for (size_t i = 0; i < finished.size() - kMaxFinishedHandles; ++i) {
      auto it = handles_.find(finished[i].second);
      it->second->monitor.join();
      handles_.erase(it);
    }
  }
}

std::shared_ptr<AsyncHandle> ExecState::Find(uint64_t id) {
  std::lock_guard lock(mutex_);
  Expire();
  auto it = handles_.find(id);
  if (it == handles_.end()) {
    throw RpcError(ErrorCode::kNotFound,
                   "No exec handle " + std::to_string(id) + " (unknown, or expired)",
                   {{"handle", id}});
  }
  return it->second;
}

std::vector<std::shared_ptr<AsyncHandle>> ExecState::List() {
  std::lock_guard lock(mutex_);
  Expire();
  std::vector<std::shared_ptr<AsyncHandle>> out;
  for (const auto& [id, h] : handles_) out.push_back(h);
  return out;
}

std::optional<Clock::time_point> ExecState::NextExpiry() const {
  std::optional<Clock::time_point> next;
  for (const auto& [id, h] : handles_) {
    int64_t done = h->finished_at_ns;
    if (done == 0) continue;
    auto due = Clock::time_point(std::chrono::nanoseconds(done)) + h->retain;
    if (!next || due < *next) next = due;
  }
  return next;
}

void ExecState::ReaperLoop() {
  std::unique_lock lock(reaper_mutex_);
  while (!stopping_) {
    uint64_t spawns = spawns_;
    lock.unlock();
    bool has_children = ReapOrphans();
    std::optional<Clock::time_point> expiry;
    {
      std::lock_guard state_lock(mutex_);
      Expire();
      expiry = NextExpiry();
    }
    lock.lock();
    auto woken = [&] { return stopping_ || spawns_ != spawns; };
    if (has_children) {
      reaper_cv_.wait_for(lock, kReaperPeriod, woken);
    } else if (expiry) {
      // Finished handles hold their output until they expire; free it on time.
      reaper_cv_.wait_until(lock, *expiry, woken);
    } else {
      reaper_cv_.wait(lock, woken);
    }
  }
}

bool ExecState::ReapOrphans() {
  // A zombie child nobody registered is an orphan the agent inherited as subreaper. Reaped
  // only once it has stayed unregistered for kOrphanAge: a command that exits at once is a
  // zombie before its exec has registered it (or another module has waited for its helper),
  // and every spawn wakes this loop, so "seen in two passes" could be microseconds apart and
  // took such children from their owners (pidfd_open ESRCH, or a waitid that never succeeds).
  constexpr auto kOrphanAge = std::chrono::seconds(1);
  auto now = Clock::now();
  std::map<pid_t, Clock::time_point> seen;
  std::vector<pid_t> children = ListChildren();
  for (pid_t pid : children) {
    {
      std::lock_guard lock(mutex_);
      if (children_.count(pid)) continue;
    }
    auto st = ReadProcStat(pid);
    if (!st || st->state != 'Z') continue;
    auto first = zombie_seen_.find(pid);
    auto since = first == zombie_seen_.end() ? now : first->second;
    if (now - since >= kOrphanAge) {
      ::waitpid(pid, nullptr, WNOHANG);
    } else {
      seen.emplace(pid, since);
    }
  }
  zombie_seen_.swap(seen);
  return !children.empty();
}

}  // namespace kvm::exec
