#include "agent/handlers/exec/command_policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "protocol/errors.h"

namespace kvm::exec {
namespace {

std::string_view BaseName(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::optional<std::string> RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return std::nullopt;
  return std::string(buf);
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Name -> first executable on kSearchPath (not canonicalised), or nullopt.
std::optional<std::string> SearchName(std::string_view name) {
  std::string_view dirs(kSearchPath);
  while (!dirs.empty()) {
    size_t colon = dirs.find(':');
    std::string candidate(dirs.substr(0, colon));
    candidate += '/';
    candidate += name;
    if (IsExecutableFile(candidate)) return candidate;
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
  }
  return std::nullopt;
}

// Resolves a whitelist entry the same way as a request; relative paths allow nothing.
std::optional<ResolvedCommand> ResolveEntry(const std::string& entry) {
  if (entry.empty() || entry.find('\0') != std::string::npos) return std::nullopt;
  std::optional<std::string> path;
  if (entry.find('/') == std::string::npos) {
    if (entry == "." || entry == "..") return std::nullopt;
    path = SearchName(entry);
  } else if (entry[0] == '/') {
    path = entry;
  }
  if (!path) return std::nullopt;
  auto real = RealPath(*path);
  if (!real) return std::nullopt;
  return ResolvedCommand{*path, *real};
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

bool OneOf(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

ResolvedCommand ResolveCommand(std::string_view command, const std::string& cwd) {
  if (command.empty()) {
    throw RpcError(ErrorCode::kInvalidParams, "Invalid params: \"command\" must not be empty",
                   {{"param", "command"}, {"expected", "a program name or path"}});
  }
  if (command.find('\0') != std::string_view::npos) {
    throw RpcError(ErrorCode::kInvalidParams,
                   "Invalid params: \"command\" must not contain NUL characters",
                   {{"param", "command"}, {"expected", "a program name or path without NUL"}});
  }
  std::optional<std::string> path;
  if (command.find('/') == std::string_view::npos) {
    if (command != "." && command != "..") path = SearchName(command);
    if (!path) {
      throw RpcError(ErrorCode::kNotFound,
                     "Command not found on the agent's search path: " + std::string(command),
                     {{"command", command}, {"search_path", kSearchPath}});
    }
  } else {
    path = command[0] == '/' ? std::string(command) : cwd + "/" + std::string(command);
  }
  auto real = RealPath(*path);
  if (!real) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      throw RpcError(ErrorCode::kNotFound, "Command not found: " + std::string(command),
                     {{"command", command}});
    }
    throw RpcError(ErrorCode::kIoError,
                   "Cannot resolve command " + std::string(command) + ": " + std::strerror(err),
                   {{"command", command}, {"errno", err}, {"detail", std::strerror(err)}});
  }
  if (!IsExecutableFile(*real)) {
    throw RpcError(ErrorCode::kIoError, "Not an executable regular file: " + std::string(command),
                   {{"command", command}, {"errno", EACCES}, {"detail", std::strerror(EACCES)}});
  }
  return ResolvedCommand{std::move(*path), std::move(*real)};
}

bool WhitelistAllows(const std::optional<std::vector<std::string>>& whitelist,
                     const ResolvedCommand& resolved) {
  if (!whitelist) return true;
  for (const auto& entry : *whitelist) {
    auto allowed = ResolveEntry(entry);
    if (allowed && allowed->real_path == resolved.real_path &&
        BaseName(allowed->path) == BaseName(resolved.path)) {
      return true;
    }
  }
  return false;
}

bool WhitelistAllowsExecutable(const std::optional<std::vector<std::string>>& whitelist,
                               const std::string& real_path) {
  if (!whitelist) return true;
  for (const auto& entry : *whitelist) {
    auto allowed = ResolveEntry(entry);
    if (allowed && allowed->real_path == real_path) return true;
  }
  return false;
}

void CheckWhitelist(const std::optional<std::vector<std::string>>& whitelist,
                    std::string_view command, const ResolvedCommand& resolved) {
  if (WhitelistAllows(whitelist, resolved)) return;
  throw RpcError(
      ErrorCode::kPermissionDenied,
      "Command not allowed by security.command_whitelist: " + std::string(command),
      {{"policy", "command_whitelist"}, {"command", command}, {"resolved", resolved.real_path}});
}

std::optional<std::string_view> EnvInjectionReason(std::string_view name, std::string_view value) {
  // LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...: every LD_ name, the loader adds new ones.
  if (StartsWith(name, "LD_")) return "the dynamic loader loads code it names";
  // What glibc itself drops for set-uid programs (its unsecure-envvars list).
  if (OneOf(name, {"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
                   "LOCPATH", "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF",
                   "RES_OPTIONS", "TMPDIR", "TZDIR"})) {
    return "glibc loads modules or files it names";
  }
  if (StartsWith(name, "BASH_FUNC_") ||
      OneOf(name, {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS"})) {
    return "a shell runs code it holds or names";
  }
  if (OneOf(name, {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PERL5LIB",
                   "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH",
                   "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "LUA_INIT", "LUA_PATH", "LUA_CPATH"})) {
    return "an interpreter loads code it holds or names";
  }
  // An allowed program that runs helpers by name (tar -z runs gzip) would find them there.
  if (name == "PATH" && value != kSearchPath) return "programs run helpers found on it";
  return std::nullopt;
}

void CheckEnvVariable(const std::optional<std::vector<std::string>>& whitelist,
                      std::string_view name, std::string_view value) {
  if (!whitelist) return;
  auto reason = EnvInjectionReason(name, value);
  if (!reason) return;
  throw RpcError(ErrorCode::kPermissionDenied,
                 "Environment variable " + std::string(name) +
                     " not allowed with security.command_whitelist: " + std::string(*reason),
                 {{"policy", "command_whitelist"}, {"variable", name}, {"reason", *reason}});
}

}  // namespace kvm::exec
