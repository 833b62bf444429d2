// The outbox on SQLite: WAL, synchronous=FULL, statements prepared once, and
// a committer thread that owns the connection and gathers appends from many
// producers into one transaction (group commit). Implements core/outbox.h;
// its thread rules are those of Outbox.
//
// Threads: every method may be called from any thread. All work runs on the
// one committer thread, in call order; every `done` callback and the append
// listener run on that thread, after the transaction they report on has
// committed (or failed). A callback must not block and must not destroy the
// outbox; it may call the outbox again (the call is queued behind the
// current work). After destruction has begun, new calls are answered at once,
// on the calling thread, with kCancelled.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/outbox.h"
#include "platform/clock.h"
#include "platform/status.h"

namespace ws {

struct SqliteOutboxOptions {
  std::string path;                  // the database file; its folder is created if missing
  uint64_t max_bytes = 268435456;    // appends beyond this fail with kResourceExhausted
  int64_t retain_delivered_s = 0;
  int64_t commit_window_us = 2000;   // how long a batch may wait to gather more appends
  size_t max_batch_events = 4096;    // a batch closes at this many events
  int64_t cache_kib = 2048;          // SQLite page cache cap (keeps RSS small with any backlog)
  Clock* clock = nullptr;            // nullptr = SystemClock()
  // A registered SQLite VFS by name; empty = SQLite's default. Lets tests
  // put a disk that fails on demand under the store.
  std::string vfs;
};

// Meanings specific to this store:
//  - max_bytes counts, per event, its encoded record plus topic and stream,
//    over the backlog and the dead letters together; retained delivered
//    events do not count (they leave after retain_delivered_s).
//  - Expired events are removed when Lease runs and about once a second
//    (busy or idle); delivered events past retention likewise.
//  - LeasedEvent::attempts counts earlier leases of the event that ended
//    without an ack (counted when ResetLeases runs).
//  - Stats().commits counts the transactions that stored at least one new
//    event, so appended_events / commits is the mean group size;
//    rejected_full counts the events of calls refused for max_bytes.
//  - An event id is "already stored" while it is in the outbox, the
//    dead-letter queue or delivered retention.
class SqliteOutbox final : public Outbox {
 public:
  // Opens (or creates) the store, checks its integrity, migrates the schema
  // (PRAGMA user_version) and starts the committer thread. A damaged file is
  // moved aside as "<path>.corrupt-<UTC>" (with its -wal/-shm) and a fresh
  // store is started; Stats().quarantined_at_start tells.
  static Result<std::unique_ptr<SqliteOutbox>> Open(SqliteOutboxOptions options);
  ~SqliteOutbox() override;  // finishes queued work, then stops the thread

  void Append(std::vector<OutboxEntry> entries, AppendDone done) override;
  void Lease(size_t max_events, LeaseDone done) override;
  void Ack(std::vector<int64_t> sequences, StatusDone done) override;
  void ResetLeases() override;
  void DeadLetter(int64_t sequence, std::string reason, StatusDone done) override;
  void SetAppendListener(std::function<void()> listener) override;
  OutboxStats Stats() const override;

  // SQLite's version ("3.40.1").
  static std::string LibraryVersion();

 private:
  class Impl;
  explicit SqliteOutbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ws
