// Shared pieces of kvmmanager-ctl's subcommands.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "ctl/agent_client.h"

namespace kvm::ctl {

// Exit codes of kvmmanager-ctl.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRpcError = 1;    // the agent answered with an error
inline constexpr int kExitUsage = 2;       // bad command line
inline constexpr int kExitConnection = 3;  // no answer: connect/timeout/protocol failure

struct Options {
  std::string socket;  // --socket, or $KVMMANAGER_SOCKET
  double timeout_seconds = 30;
  bool json = false;        // --json: raw JSON instead of tables
  int exit_code = kExitOk;  // set by the subcommand that ran
};

// Connects using the global options; throws ClientError with a readable reason.
std::unique_ptr<AgentClient> Connect(const Options& options);
// Calls a method; prints an RPC error to stderr (returns nullopt-like ok=false).
CallResult CallOrPrint(AgentClient& client, std::string_view method,
                       const boost::json::object& params = {});
// Prints "error CODE (kind): message" and data to stderr.
// The `kind` in an agent error's data ("not_found", "permission_denied", ...); empty if none.
std::string_view ErrorKind(const CallResult& result);
void PrintRpcError(const CallResult& result);
// What a method's result must be; anything else is a malformed reply (ClientError, exit 3).
enum class ResultShape { kAny, kObject };
// Throws ClientError "malformed reply: ..." unless `result` is an object.
void RequireObjectResult(const boost::json::value& result, std::string_view method);
// Throws ClientError "malformed reply: WHAT <the value, shortened, safe for a terminal>".
[[noreturn]] void ThrowMalformed(std::string_view what, const boost::json::value& got);
// The usual subcommand: connect, call `method`, then print the raw result with --json or hand it
// to `show` for a readable form. An RPC error is printed and sets options.exit_code.
void CallAndShow(Options& options, std::string_view method, const boost::json::object& params,
                 const std::function<void(const boost::json::value& result)>& show,
                 ResultShape shape = ResultShape::kAny);

// Subcommand groups, one file each under ctl/commands/.
void AddCoreCommands(CLI::App& app, Options& options);    // call, ping
void AddSystemCommands(CLI::App& app, Options& options);  // info, net, df
void AddExecCommands(CLI::App& app, Options& options);    // exec, ps, kill
void AddFileCommands(CLI::App& app, Options& options);    // cp, cat, ls, stat, rm
void AddPowerCommands(CLI::App& app, Options& options);   // shutdown, reboot

}  // namespace kvm::ctl
