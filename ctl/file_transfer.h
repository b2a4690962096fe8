// Whole-file transfers to and from the agent: chunked, pipelined, verified by sha256.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

#include "ctl/agent_client.h"

namespace kvm::transfer {

// The agent refused or failed a step; `result` holds its error.
class TransferError : public std::runtime_error {
 public:
  TransferError(std::string what, CallResult result, std::string method = {})
      : std::runtime_error(std::move(what)), result(std::move(result)), method(std::move(method)) {}
  CallResult result;
  std::string method;  // the agent method that answered `result`; empty for a local failure
};

// A local read or write failed (disk full, I/O error, a file that shrank): ctl's exit code 2.
class LocalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

struct Options {
  int window = 4;  // requests in flight; stays below the agent's max_concurrent_requests
  std::string mode = "overwrite";          // uploads: overwrite | create_new
  std::optional<std::string> permissions;  // uploads: e.g. "0644"
  ProgressFn progress;
};

struct Outcome {
  uint64_t size = 0;
  std::string sha256;
};

// Uploads `size` bytes of `local_fd` (from offset 0) to `remote` via file_upload_*; the agent
// verifies the sha256 before the file appears. Throws TransferError / ClientError.
Outcome Upload(AgentClient& client, int local_fd, uint64_t size, const std::string& remote,
               const Options& options);

// Downloads `remote` into `local_fd` (written from offset 0) and checks the sha256 the agent
// computed against the bytes received. Throws TransferError / ClientError.
Outcome Download(AgentClient& client, const std::string& remote, int local_fd,
                 const Options& options);

// Streams `remote` to `out_fd` in order (cat): no hash check.
uint64_t Stream(AgentClient& client, const std::string& remote, int out_fd, const Options& options);

}  // namespace kvm::transfer
