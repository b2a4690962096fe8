// Host side of the real-VM suite: QEMU processes, the agent channel (NDJSON over QEMU's chardev
// socket), and QMP. Every blocking call takes a timeout; every child is killed with its process
// group.
#pragma once

#include <sys/types.h>

#include <boost/json.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vmtest {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

double MsSince(Clock::time_point t);

struct CommandResult {
  int status = -1;  // exit code; 128+N when killed by signal N; -1 when it could not start
  bool timed_out = false;
  std::string output;  // stdout and stderr together
};
// Runs argv with stdin from /dev/null; kills its whole process group at the timeout (the
// project's RunProgram kills only the child, and these commands spawn their own children).
CommandResult RunCommand(const std::vector<std::string>& argv, Clock::duration timeout);

// One connection to the agent through QEMU's chardev socket.
class Channel {
 public:
  struct Reply {
    bool ok = false;                   // a response with our id arrived and parsed
    std::string failure;               // why not, when !ok
    json::object response;             // the whole response object
    std::vector<std::string> skipped;  // lines read before ours (other ids, resync errors, junk)
    double ms = 0;                     // send to reply
  };

  Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel() { Close(); }

  bool Connect(const std::string& path, Clock::duration timeout);
  void Close();
  bool connected() const { return fd_ >= 0; }
  bool SendRaw(std::string_view bytes);
  // Next complete line, or nullopt at the deadline or on EOF (then eof() is true).
  std::optional<std::string> ReadLine(Clock::time_point deadline);
  bool eof() const { return eof_; }
  // Reads until n bytes or one whole line are buffered; false at the deadline or EOF.
  bool WaitBuffered(size_t n, Clock::time_point deadline);
  // Sends one request with a fresh id (after a bare "\n" when resync is set) and reads until the
  // response with that id arrives.
  Reply Call(std::string_view method, const json::value& params, Clock::duration timeout,
             bool resync = false);
  static long long NextId();

 private:
  bool Fill(Clock::time_point deadline);  // one read; false on timeout or EOF
  int fd_ = -1;
  bool eof_ = false;
  std::string buf_;
};

// Minimal QMP client: commands and the asynchronous events QEMU sends in between.
class Qmp {
 public:
  bool Connect(const std::string& path, Clock::duration timeout, std::string* err);
  // The "return" member, or nullopt with *err set.
  std::optional<json::value> Execute(std::string_view cmd, const json::object& args,
                                     std::string* err);
  // First event named `name` (queued or arriving before the deadline) for which match() holds.
  // Events are consumed in order: it and every event queued before it are dropped.
  template <typename Pred>
  std::optional<json::object> WaitEvent(std::string_view name, Clock::duration timeout, Pred match);
  void DropEvents() { events_.clear(); }
  void Close() { ch_.Close(); }

 private:
  bool PumpOne(Clock::time_point deadline);
  Channel ch_;
  std::vector<json::object> events_;
};

template <typename Pred>
std::optional<json::object> Qmp::WaitEvent(std::string_view name, Clock::duration timeout,
                                           Pred match) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it) {
      const json::value* ev_name = it->if_contains("event");
      if (ev_name && ev_name->is_string() && ev_name->get_string() == name && match(*it)) {
        json::object ev = *it;
        events_.erase(events_.begin(), it + 1);
        return ev;
      }
    }
    if (!PumpOne(deadline)) return std::nullopt;
  }
}

struct VmOptions {
  bool port = true;        // attach the virtserialport at boot (else hot-plug it over QMP)
  bool no_reboot = false;  // pass -no-reboot
};

// A QEMU started through run-vm.sh in its own process group.
class Vm {
 public:
  Vm() = default;
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;
  ~Vm() { Kill(); }

  bool Start(const std::string& scripts_dir, const std::string& image_dir,
             const std::string& work_dir, const std::string& name, const VmOptions& opt,
             std::string* err);
  bool running();
  // QEMU's exit status if it exits within the timeout.
  std::optional<int> WaitExit(Clock::duration timeout);
  void Kill();
  std::string Console() const;
  std::string Diagnostics()
      const;  // tail of the console and of QEMU's own log, for failure messages

  std::string sock, qmp, console_path, log_path, accel;
  Clock::time_point started;
  std::optional<int> exit_status;

 private:
  pid_t pid_ = -1;
};

// Helpers for JSON results whose exact layout belongs to other issues: search the whole tree.
bool TreeHasString(const json::value& v, const std::string& needle, bool ci = false);
const json::value* FindKey(const json::value& v, std::string_view key);
std::string Short(const json::value& v, size_t max = 600);

}  // namespace vmtest
