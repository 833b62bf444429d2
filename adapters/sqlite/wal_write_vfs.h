// A VFS that gathers the writes SQLite makes to a -wal file and hands them
// to the file it wraps as one write per commit.
//
// A commit writes each changed page as a WAL frame in two calls (a 24-byte
// header, then the page), one after the other at rising offsets, and then,
// under synchronous=FULL, syncs the file: each a system call that copies a
// little into the page cache. Gathered, a commit's frames are one call. In
// the in-process benchmark (400,000 appends, about 6,250 commits) the
// store's threads made 642,000 pwrite calls, and 159,000 with this VFS.
//
// The gathered bytes are passed on as soon as the page of the commit's
// last frame (the one whose header carries the database size) is gathered,
// within that write: a failed write fails it, so the commit fails, before
// SQLite publishes the commit to other connections through the WAL index
// and before any sync could make it durable. That holds whether the
// commit syncs (FULL) or not (NORMAL, the store's delivery acks). Frames a
// transaction writes before its commit (a page cache that spills) wait
// with it. Everything gathered also reaches the file before anything
// reads, truncates, sizes, syncs or closes it, and before any call on the
// WAL index or a lock: nothing is durable later, and no reader sees less,
// than without this VFS. A connection gathers only while told to
// (kWalGatherControl); without it, or for any file but a -wal file whose
// connection's main file it can pair it with, calls pass straight through.
#pragma once

#include <string>

#include "platform/status.h"

namespace ws::sqlite {

// Registers (once per base) and returns the name of the VFS that wraps
// `base` ("" for SQLite's default VFS). The VFS stays registered for the
// life of the process.
Result<std::string> WalWriteVfs(const std::string& base);

// sqlite3_file_control(db, "main", kWalGatherControl, &on) with an int `on`:
// whether the connection's WAL writes are gathered (off after opening).
// SQLITE_NOTFOUND when the connection's VFS is not one of these.
constexpr int kWalGatherControl = 0x57530001;

// Most bytes gathered before they are passed on without waiting for the
// commit frame.
// Below 128 KiB: SQLite's unix VFS takes at most 0x1ffff bytes per write
// (SQLite itself never writes more at once) and masks the length with it, so
// a longer write comes back short and fails as "disk full" (a 259,904-byte
// write did).
constexpr size_t kWalWriteGatherBytes = 124 * 1024;

}  // namespace ws::sqlite
