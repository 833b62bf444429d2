// The outbox's tables and the statements on them: schema and migrations,
// the integrity check at open, and one method per SQL operation. Internal to
// adapters/sqlite. Single-threaded: it belongs to SqliteOutbox's committer
// thread (opened on the caller's thread, then handed over). It decides no
// policy beyond single statements; SqliteOutbox composes these calls into
// transactions.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/sqlite/sqlite_handle.h"
#include "core/outbox.h"
#include "core/priority.h"
#include "platform/status.h"

namespace ws::sqlite {

struct OutboxDbOptions {
  std::string path;
  std::string vfs;         // empty = SQLite's default
  int64_t cache_kib = 2048;
};

// An event id already in the store (outbox, dead letters or delivered).
struct StoredId {
  int64_t sequence = 0;
  std::string record;
};

struct StoreTotals {
  ClassBacklog backlog[kPriorityCount];
  uint64_t dlq_count = 0;
  uint64_t dlq_bytes = 0;
};

// What Open found: the state the committer starts from.
struct OpenReport {
  int64_t quick_check_us = 0;
  int schema_version_found = 0;  // PRAGMA user_version before migrating
  int64_t last_sequence = 0;
  StoreTotals totals;
};

struct NewEventRow {
  int64_t sequence = 0;
  std::string_view id;
  Priority priority = Priority::kNormal;
  std::string_view stream;
  std::string_view topic;
  int64_t accepted_us = 0;
  int64_t expires_us = 0;
  uint64_t bytes = 0;
  std::string_view record;
};

class OutboxDb {
 public:
  // Opens or creates the file, runs PRAGMA quick_check, switches to WAL with
  // synchronous=FULL, migrates the schema and prepares every statement.
  // kDataLoss means the file is damaged (or is not an outbox) and should be
  // quarantined; other errors are reported as they are.
  static Result<std::unique_ptr<OutboxDb>> Open(const OutboxDbOptions& options, OpenReport* report);

 private:
  // Only Open can name the tag, so only Open constructs one (make_unique
  // needs a public constructor).
  struct PrivateTag {
    explicit PrivateTag() = default;
  };

 public:
  explicit OutboxDb(PrivateTag) {}

  OutboxDb(const OutboxDb&) = delete;
  OutboxDb& operator=(const OutboxDb&) = delete;
  ~OutboxDb();

  // BEGIN IMMEDIATE: the write lock is taken up front, so a transaction
  // never fails half-way for want of it.
  Status Begin();
  Status Commit();
  // Ends an open transaction without its changes. SQLite may already have
  // rolled back by itself (disk full, I/O error); then this does nothing.
  void Rollback();
  // One savepoint level, wrapping one request inside a batch transaction.
  Status Savepoint();
  Status ReleaseSavepoint();
  Status RollbackToSavepoint();
  bool InTransaction() const;

  // The highest sequence ever assigned: the meta counter, or a higher
  // sequence found in a table.
  Result<int64_t> LastSequence();
  Status SetLastSequence(int64_t sequence);

  Result<std::optional<StoredId>> FindId(std::string_view id);
  Status InsertEvent(const NewEventRow& row);

  // Removes an acknowledged event, keeping a copy in `delivered` when
  // `retain`. False if no such event is in the outbox.
  Result<bool> RemoveDelivered(int64_t sequence, bool retain, int64_t now_us);
  // False if no such event is in the outbox.
  Result<bool> MoveToDeadLetters(int64_t sequence, std::string_view reason, int64_t now_us);

  Result<bool> AnyExpired(int64_t now_us);
  // Deletes up to `limit` expired events; returns how many.
  Result<int64_t> DeleteExpired(int64_t now_us, int64_t limit);
  Result<bool> AnyDeliveredUpTo(int64_t cutoff_us);
  Result<int64_t> PurgeDeliveredUpTo(int64_t cutoff_us, int64_t limit);

  // Counts a delivery attempt for every event of class `p` up to `sequence`.
  Status AddAttempt(Priority p, int64_t up_to_sequence);

  // Appends up to `limit` unexpired events of class `p` with a sequence above
  // `after`, in sequence order, to `out`. Rows whose record cannot be decoded
  // go to `unreadable` instead. `*last_seen` is the highest sequence read.
  Status ReadLeasable(Priority p, int64_t after, int64_t now_us, size_t limit, std::vector<LeasedEvent>* out,
                      std::vector<std::pair<int64_t, Status>>* unreadable, int64_t* last_seen);

  // Counts and bytes per class and of the dead letters, kept by triggers in
  // the `totals` table, plus the oldest event of each class: no table scan.
  Result<StoreTotals> ReadTotals();

 private:
  Status Prepare();

  // The connection is declared first so it is destroyed last, after every
  // statement prepared on it.
  Connection db_;
  Statement begin_, commit_, rollback_, savepoint_, release_, rollback_to_;
  Statement last_sequence_, set_last_sequence_;
  Statement find_id_, insert_event_;
  Statement copy_to_delivered_, delete_event_, copy_to_dlq_;
  Statement any_expired_, delete_expired_, any_delivered_, purge_delivered_;
  Statement add_attempt_, read_class_, read_totals_, oldest_in_class_;
};

}  // namespace ws::sqlite
