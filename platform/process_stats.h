// Figures about this process from /proc/self: memory and bytes written to
// storage (flash wear). Safe from any thread.
#pragma once

#include <cstdint>
#include <string>

#include "platform/status.h"

namespace ws {

struct ProcessStats {
  uint64_t rss_bytes = 0;        // VmRSS from /proc/self/status
  uint64_t peak_rss_bytes = 0;   // VmHWM
  uint64_t write_bytes = 0;      // bytes sent to the storage layer (/proc/self/io write_bytes)
  uint64_t read_bytes = 0;       // /proc/self/io read_bytes
  uint64_t cpu_user_us = 0;      // getrusage
  uint64_t cpu_system_us = 0;
  uint32_t threads = 0;
  uint32_t open_fds = 0;
};

Result<ProcessStats> ReadProcessStats();

// Gives the pages of freed heap memory back to the system (glibc's
// malloc_trim): after a burst the allocator otherwise keeps them, and they
// count in RSS until the next burst reuses them. True if anything was
// released. Costs a walk over the allocator's free lists.
bool ReleaseFreeHeap();

// The kernel's random id of the running boot (/proc/sys/kernel/random/
// boot_id), the same for every process until the machine restarts. Files
// written in the same boot are in the page cache whatever happened to the
// process that wrote them; after a power cut the id is new.
Result<std::string> KernelBootId();

}  // namespace ws
