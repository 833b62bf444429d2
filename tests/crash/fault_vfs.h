// A disk for crash tests: an SQLite VFS over the default "unix" VFS that
// remembers, per file, what the last successful xSync made durable, and on
// demand loses everything else, as a power cut would. It can also fail the
// Nth write or sync with an I/O error or "disk full", counted from when the
// fault is armed. It is the one fake the crash tests use; the files, SQLite
// and the store above it are real.
//
// Install() registers it as SQLite's default VFS, so code that opens
// databases without naming a VFS runs on it unchanged.
//
// The model of a disk:
//  - A write reaches the real file at once (so reads see it) but counts as
//    durable only after a later successful xSync of that file. xSync records
//    that here and skips the real fsync: the machine running the test never
//    loses power, and thousands of fsyncs would only slow the test down.
//  - A file created since the last restore whose directory entry was never
//    synced vanishes in a power cut. SQLite's unix VFS syncs the directory on
//    the first sync of a newly created journal or WAL, which makes every
//    entry in that directory durable; a file whose entry is durable but whose
//    content was never synced comes back empty.
//  - Deleting a file is durable at once (a simplification: a real disk may
//    bring back a file whose unlink was not followed by a directory sync).
//  - The WAL index (-shm) is never synced; a power cut removes it.
//  - Temporary files (no name, or delete-on-close) pass through untracked.
//
// Threads: SQLite may call into the VFS from any thread; every public method
// may be called from any thread too. PowerCycle() and Reset() require that
// no database connection is open on the VFS. At most one FaultVfs exists at a
// time; it must outlive every connection opened on it.
#pragma once

#include <cstdint>
#include <memory>

#include "platform/status.h"

namespace ws::testing {

enum class FaultError {
  kIoError,   // SQLITE_IOERR_WRITE / SQLITE_IOERR_FSYNC (errno EIO)
  kDiskFull,  // SQLITE_FULL (errno ENOSPC)
};

enum class CutTiming {
  kBeforeSync,  // the sync never happens: durable state is that of the previous sync
  kAfterSync,   // the sync completes, then the power goes before anything else
};

struct FaultVfsCounters {
  int64_t opens = 0;   // tracked files opened
  int64_t writes = 0;  // xWrite calls on tracked files
  int64_t syncs = 0;   // xSync calls on tracked files (the sync points)
  int64_t faults_injected = 0;
  bool power_lost = false;
};

class FaultVfs {
 public:
  static constexpr const char* kName = "ws-fault";

  // Registers the VFS as SQLite's process-wide default.
  static Result<std::unique_ptr<FaultVfs>> Install();
  // Unregisters it. Every connection opened on it must be closed.
  ~FaultVfs();
  FaultVfs(const FaultVfs&) = delete;
  FaultVfs& operator=(const FaultVfs&) = delete;

  // The `nth` write (1 = the next one) fails with `error` and writes
  // nothing. With `persistent`, every later write fails too until
  // ClearFaults() ("the disk stays full until space returns").
  void FailWrite(int64_t nth, FaultError error, bool persistent = false);
  // The `nth` sync (1 = the next one) fails with `error`. The bytes written
  // before it stay in the file but do not become durable.
  void FailSync(int64_t nth, FaultError error);
  // The power goes at the `nth` sync (1 = the next one). From then on every
  // write, truncate, sync and delete fails with an I/O error and changes
  // nothing; PowerCycle() brings the files back as the disk kept them.
  void CutPowerAtSync(int64_t nth, CutTiming timing);
  // Disarms every planned fault. A power cut that already happened stays.
  void ClearFaults();

  FaultVfsCounters Counters() const;

  // The reboot after a power cut (or a simulated one at this moment): every
  // tracked file goes back to its content as of its last sync, files that
  // were never durable vanish, WAL indexes vanish. Then the power is back,
  // faults are cleared, counters restart at zero and the files as they now
  // are count as durable.
  Status PowerCycle();

  // Starts afresh without losing anything: forgets what it tracked, clears
  // faults and counters; the files as they now are count as durable.
  Status Reset();

  struct Impl;

 private:
  // Only Install can name the tag, so only Install constructs one.
  struct PrivateTag {
    explicit PrivateTag() = default;
  };

 public:
  FaultVfs(PrivateTag, std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ws::testing
