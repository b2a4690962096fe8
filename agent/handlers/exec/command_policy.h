// Which program a request runs, and whether security.command_whitelist allows it.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvm::exec {

// The agent's own search path for command names. Fixed on purpose: the request's env PATH
// and the agent's environment never influence what a name means.
inline constexpr const char* kSearchPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct ResolvedCommand {
  std::string path;       // the name found on kSearchPath, or the path given (made absolute)
  std::string real_path;  // realpath() of `path`: what is executed and what the whitelist sees
};

// Resolves `command`: a name without '/' is looked up on kSearchPath (first regular,
// executable file); anything with '/' is a path, relative ones taken from `cwd`.
// Throws RpcError: not_found, invalid_params (NUL), io_error (not executable).
ResolvedCommand ResolveCommand(std::string_view command, const std::string& cwd);

// True when `resolved` may run under `whitelist` (nullopt: everything may run).
// An entry (name or absolute path) matches when it resolves to the same real file AND the
// same base name, so a symlink `sh` -> busybox cannot pass for an allowed `ls` -> busybox.
bool WhitelistAllows(const std::optional<std::vector<std::string>>& whitelist,
                     const ResolvedCommand& resolved);

// The same check for a running process's executable (/proc/PID/exe target).
bool WhitelistAllowsExecutable(const std::optional<std::vector<std::string>>& whitelist,
                               const std::string& real_path);

// Throws permission_denied (data.policy "command_whitelist") unless allowed.
void CheckWhitelist(const std::optional<std::vector<std::string>>& whitelist,
                    std::string_view command, const ResolvedCommand& resolved);

// Why an environment variable `name` = `value` would make an allowed program run code the
// whitelist does not name (the dynamic loader's LD_*, glibc's unsecure-environment list,
// shell start-up and interpreter options, a PATH other than kSearchPath), or nullopt.
std::optional<std::string_view> EnvInjectionReason(std::string_view name, std::string_view value);

// With a whitelist, throws permission_denied (data.policy "command_whitelist",
// data.variable) for such a variable. Without one any program runs anyway: all pass.
void CheckEnvVariable(const std::optional<std::vector<std::string>>& whitelist,
                      std::string_view name, std::string_view value);

}  // namespace kvm::exec
