// Heap settings for a process that moves many message-sized (64 KiB .. 1 MiB) buffers.
#pragma once

#include <malloc.h>

namespace kvm {

// glibc returns the top of the heap to the kernel as soon as 128 KiB of it is free, and serves
// large blocks by mmap; a file transfer then brk()s, page-faults and trims again for every
// 64 KiB message. Measured on the 2-core test VM (bench/json_microbench AgentSerializeRead):
// 75 us per 64 KiB reply with the defaults, 14 us with these, the rest being page faults.
// The cost is that up to kRetainBytes of freed heap may stay resident after a burst.
inline constexpr int kRetainBytes = 1 << 20;

inline void TuneMallocForMessages() {
  mallopt(M_MMAP_THRESHOLD, kRetainBytes);  // also turns off glibc's sliding threshold
  mallopt(M_TRIM_THRESHOLD, kRetainBytes);
  // One arena for all threads: each worker would otherwise get its own, each keeping up to
  // kRetainBytes. Agent RSS after 3 x 10 MB copied each way: 3876 KiB with per-thread arenas,
  // 2748 KiB with one; transfer_bench showed no change in MB/s.
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace kvm
