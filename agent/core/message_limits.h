// How much binary data fits in one message (file chunks, exec input): replies and requests must
// stay within max_message_size_kb, leaving room for the JSON-RPC envelope (id, member names).
#pragma once

#include <algorithm>
#include <cstddef>

#include "agent/core/config.h"

namespace kvm {

// Bytes a reply may use; 1 KiB is kept for the envelope (ids up to ~900 characters).
inline size_t ReplyBudget(const Config& config) {
  size_t max = config.max_message_bytes();
  return max - std::min<size_t>(1024, max / 4);
}
// Largest chunk of raw bytes per file_read (base64), file_upload_chunk or exec_input: 48384
// at 64 KiB.
inline size_t MaxBinaryChunk(const Config& config) {
  return std::max<size_t>(3, ReplyBudget(config) / 4 * 3);
}
// Largest chunk per file_read with encoding utf8: JSON may escape a byte into 6 characters.
inline size_t MaxUtf8Chunk(const Config& config) {
  return std::max<size_t>(4, ReplyBudget(config) / 6);
}

}  // namespace kvm
