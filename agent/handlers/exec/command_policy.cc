#include "agent/handlers/exec/command_policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

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

}  // namespace kvm::exec
