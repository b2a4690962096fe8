// How a power action is carried out on this guest: which init system to ask (detected at run
// time), the forced reboot(2) path, and the wall message to logged-in users.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvm::power {

enum class Action { kPowerOff, kReboot, kHalt };

// "poweroff", "reboot", "halt": the names used in results and logs.
const char* ActionName(Action action);

// Where the module looks for things. In production every path is the real one. When the agent
// was started with KVM_AGENT_POWER_TEST_DIR=<dir> (tests only; a request cannot set it), every
// probed path is read below <dir>, programs are taken only from <dir>/bin, and reboot(2) is
// recorded in <dir>/reboot-syscall.log instead of being called: such an agent cannot power off
// the machine it runs on.
struct Environment {
  std::string root;                       // prefix for probed paths ("" in production)
  std::vector<std::string> program_dirs;  // searched in order, absolute
  bool test_mode = false;

  static Environment Production();
  static Environment ForTest(const std::string& dir);
  // Production() unless KVM_AGENT_POWER_TEST_DIR names an absolute directory.
  static Environment FromProcessEnvironment();

  std::string Path(std::string_view absolute) const { return root + std::string(absolute); }
  // Absolute path of an executable regular file called `name`, or "" if none.
  std::string FindProgram(std::string_view name) const;
};

// What the process may do, probed once per request (kept apart so tests can vary it).
struct Privileges {
  bool root = false;          // effective uid 0
  bool cap_sys_boot = false;  // CAP_SYS_BOOT in the effective set (needed by reboot(2))
  static Privileges OfThisProcess();
};

// One way to carry out the action, chosen before the agent answers.
struct Plan {
  Action action = Action::kPowerOff;
  // "systemd", "sysv", "busybox" (PID 1 handles busybox's signal), "busybox-force" (PID 1 does
  // not: busybox calls reboot(2) itself after sync), "syscall" (force: sync + reboot(2)).
  std::string method;
  std::vector<std::string> argv;  // program and arguments; empty for "syscall"
};

// Picks the method (documented order: systemd, SysV shutdown, busybox; `force` -> syscall).
// Throws RpcError: kUnsupported when nothing usable exists, kPermissionDenied when the
// method needs privileges the agent lacks.
Plan ChoosePlan(const Environment& env, const Privileges& privileges, Action action, bool force,
                const std::string& message);

// The result of running a plan.
struct Outcome {
  bool ok = false;
  std::string detail;  // exit status and the program's stderr, or the errno text
};

// Starts the plan's program (empty signal mask, default dispositions, stdin/stdout on
// /dev/null) and returns its pid, or -1 with `error` set. `stderr_fd` receives a pipe read end
// carrying the child's stderr.
pid_t SpawnPlan(const Plan& plan, int* stderr_fd, std::string* error);

// sync() then reboot(2) for the action; in test mode records the call instead. Only returns
// on failure (or in test mode).
Outcome ForcedReboot(const Environment& env, Action action);

// Replaces bytes a terminal would interpret (C0/C1 controls, DEL) so a host-supplied message
// cannot drive users' terminals; newlines become "\r\n".
std::string SanitizeForTerminal(std::string_view text);

// Terminal lines (e.g. "pts/0", "tty1") of users logged in according to the utmp file.
std::vector<std::string> LoggedInTerminals(const Environment& env);

// Writes `text` (already sanitized) to every logged-in terminal; returns how many took it.
int BroadcastToTerminals(const Environment& env, const std::string& text);

}  // namespace kvm::power
