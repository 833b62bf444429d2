// File operations with explicit durability. Every function here either
// completes or returns an error naming the path; none throws. Safe to call
// from any thread (they share no state).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "platform/status.h"

namespace ws {

// Reads a whole (small) file.
Result<std::string> ReadFile(const std::string& path);

// Reads a regular file of at most `max_bytes` (a secret, a token): anything
// else at the path (a FIFO, a directory, a device) or a larger file is an
// error, and neither error contains the contents. Never blocks on a FIFO.
Result<std::string> ReadRegularFile(const std::string& path, size_t max_bytes);

// Replaces `path` atomically and durably: writes `path.tmp-<pid>`, fsyncs it,
// renames it over `path`, then fsyncs the directory. After a power cut the
// file holds either the old or the new contents, never a mix. `mode` applies
// to the new file.
Status AtomicWriteFile(const std::string& path, std::string_view contents, uint32_t mode = 0644);

// Replaces `path` with write-temp and rename, without any fsync: for a file
// whose meaning ends with the boot. Until the machine restarts, readers see
// the old contents or the new ones, never a mix; after a power cut the file
// may hold either, be empty or be gone, so only an exact match of what
// this boot would write may be trusted. Costs no flash sync.
Status ReplaceFileUntilReboot(const std::string& path, std::string_view contents);

// fsync of the directory itself, so a create/rename/unlink in it is durable.
Status SyncDirectory(const std::string& dir);

// mkdir -p; succeeds if the directory exists.
Status MakeDirectories(const std::string& path, uint32_t mode = 0755);

// rename(2) followed by a sync of the destination's directory.
Status RenameDurably(const std::string& from, const std::string& to);

bool PathExists(const std::string& path);

// The directory part of a path ("." for a bare name).
std::string DirName(const std::string& path);

struct SpaceInfo {
  uint64_t free_bytes;   // available to this (unprivileged) process
  uint64_t total_bytes;
};
// statvfs of the filesystem that holds `path`.
Result<SpaceInfo> QuerySpace(const std::string& path);

}  // namespace ws
