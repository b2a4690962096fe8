// kvmmanager-ctl: talk to a kvmmanager-agent from the host without hand-typing JSON.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ctl/ctl.h"
#include "startup/malloc_tuning.h"
#include "startup/standard_fds.h"
#include "version.h"

namespace {
// What a command printed must have reached stdout: a full disk or a closed stdout is a
// local problem (exit 2), not a success.
int CheckOutputWritten(int exit_code) {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return exit_code;
  std::fprintf(stderr, "kvmmanager-ctl: cannot write the output%s%s\n", errno ? ": " : "",
               errno ? std::strerror(errno) : "");
  return exit_code == kvm::ctl::kExitOk ? kvm::ctl::kExitUsage : exit_code;
}
}  // namespace

int main(int argc, char** argv) {
  kvm::FillClosedStandardFds();
  kvm::TuneMallocForMessages();
  using namespace kvm::ctl;
  Options options;
  if (const char* env = std::getenv("KVMMANAGER_SOCKET")) options.socket = env;

  CLI::App app{
      "kvmmanager-ctl: host-side client for kvmmanager-agent (JSON-RPC 2.0 over a unix socket:\n"
      "the agent's --listen socket or the host end of the VM's virtio-serial channel).\n"
      "The options below may also follow the command (after exec --, they are the command's).\n"
      "Exit codes: 0 success, 1 the agent answered with an error (or a copy's sha256 check\n"
      "failed), 2 bad usage or a local file problem (cannot read or write it, disk full),\n"
      "3 no answer (cannot connect, timeout, malformed reply), 128+N cp/cat stopped by\n"
      "signal N (partial download removed, upload aborted), or exec stopped by signal N\n"
      "while the agent did not answer."};
  app.set_version_flag("-V,--version", std::string("kvmmanager-ctl ") + KVM_AGENT_VERSION);
  app.add_option("-s,--socket", options.socket,
                 "unix socket of the agent or of the VM channel (default: $KVMMANAGER_SOCKET)");
  app.add_option("-t,--timeout", options.timeout_seconds, "seconds to wait for each reply")
      ->check(CLI::Validator(
          [](std::string& text) {
            // CLI::Range lets NaN through (every comparison with it is false).
            char* end = nullptr;
            double value = std::strtod(text.c_str(), &end);
            bool whole = !text.empty() && end && *end == '\0';
            return whole && std::isfinite(value)
                       ? std::string()
                       : std::string("must be a number of seconds, got ") + text;
          },
          "", "FINITE"))
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  app.add_flag("--json", options.json, "print raw JSON instead of tables");
  app.require_subcommand(1);
  // Global options also after the subcommand (`ping --json`), as users type them; a
  // subcommand's own option of the same name (kill -s) still wins.
  app.fallthrough();

  AddCoreCommands(app, options);
  AddSystemCommands(app, options);
  AddExecCommands(app, options);
  AddFileCommands(app, options);
  AddPowerCommands(app, options);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 says "A subcommand is required" for `ctl frobnicate`: name the word instead.
    if (std::string_view(e.get_name()) == "RequiredError" && !app.remaining().empty() &&
        app.get_subcommands().empty()) {
      std::fprintf(stderr,
                   "kvmmanager-ctl: unknown command \"%s\"\nRun with --help for the list.\n",
                   app.remaining().front().c_str());
      return kExitUsage;
    }
    int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  } catch (const kvm::UsageError& e) {
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    return kExitUsage;
  } catch (const kvm::ClientError& e) {
    std::fprintf(stderr, "kvmmanager-ctl: %s\n", e.what());
    return kExitConnection;
  }
  return CheckOutputWritten(options.exit_code);
}
