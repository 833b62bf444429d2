// The outbox's tables and the statements on them: schema and migrations,
// the integrity checks (at open, and the full one a background thread may
// run on its own connection), and one method per SQL operation. Internal to
// adapters/sqlite. Single-threaded: it belongs to SqliteOutbox's committer
// thread (opened on the caller's thread, then handed over). It decides no
// policy beyond single statements; SqliteOutbox composes these calls into
// transactions.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "adapters/sqlite/sqlite_handle.h"
#include "core/outbox.h"
#include "core/outbox_policy.h"
#include "core/priority.h"
#include "platform/status.h"

namespace ws::sqlite {

// After a checkpoint a larger -wal file is cut back to this size: above the
// peak of a normal cycle (a little over the checkpoint size), so the file
// is overwritten in place; the committer copies everything at 4 x.
constexpr int64_t WalSizeLimitBytes(int64_t wal_checkpoint_bytes) { return 2 * wal_checkpoint_bytes; }

struct OutboxDbOptions {
  std::string path;
  std::string vfs;  // empty = SQLite's default
  int64_t cache_kib = 2048;
  // PRAGMA quick_check (reads every page) before anything else; without it
  // only the structural check runs (header, page count against the file
  // size, schema), and the caller is expected to run FullCheck later.
  bool full_check = true;
  int64_t wal_checkpoint_bytes = kDefaultWalCheckpointBytes;
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
  bool full_check = false;  // quick_check ran (else only the structural check)
  int64_t check_us = 0;
  int schema_version_found = 0;  // PRAGMA user_version before migrating
  int64_t last_sequence = 0;
  StoreTotals totals;
};

// The first event of a class in (priority, sequence) order.
struct EventHead {
  int64_t sequence = 0;
  uint64_t bytes = 0;
  int64_t accepted_us = 0;
};

// An event waiting for its retry time (set by Nack).
struct WaitingRow {
  int64_t sequence = 0;
  Priority priority = Priority::kNormal;
  int64_t not_before_us = 0;
};

// A dead letter with what it takes to put it back into the outbox.
struct DeadLetterRow {
  int64_t sequence = 0;
  std::string id;
  Priority priority = Priority::kNormal;
  std::string stream;
  std::string topic;
  uint64_t bytes = 0;
  std::string record;
};

// A retained delivered event, as Replay needs it.
struct DeliveredRow {
  std::string id;
  Priority priority = Priority::kNormal;
  std::string stream;
  std::string topic;
  std::string record;
};

// A step of the wall clock being carried into the stored times: in each
// table, the rows with done_up_to < seq <= up_to have their times moved by
// delta_us; with only_before_us > 0, only the times below it (stamped
// before the clock was set), an accepted time taking its TTL along. Kept in
// `meta` while unfinished, so a restart finishes it.
struct ClockShift {
  int64_t delta_us = 0;
  int64_t up_to = 0;
  int64_t done_up_to = 0;
  int64_t only_before_us = 0;
};

// The times in the store that lie before a given wall time.
struct EarlyTimes {
  int64_t last_sequence = 0;  // the highest sequence with such an accepted time
  int64_t newest_us = 0;      // the latest such accepted time
  int64_t first_sequence = 0;  // the lowest sequence in the store
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
  int64_t replay_of = 0;  // the delivered sequence this event re-sends; 0 = none
  int32_t attempts = 0;   // leases that ended without an ack so far
};

// Checks the first 100 bytes of a database file (its header) against the
// file's size: the magic string, sane page size and format fields, and a
// page count that fits in the file. kDataLoss names what is wrong. Pure;
// exposed for tests.
Status CheckDatabaseHeader(std::string_view header, uint64_t file_size);

// PRAGMA quick_check over the whole file on a connection of its own, opened
// read-only (no write lock, so the committer keeps committing meanwhile).
// For a thread other than the committer's. kDataLoss when it finds damage,
// kCancelled once `*stop` turns true (checked every few thousand steps),
// other codes when the check itself could not run.
Status FullCheckOnOwnConnection(const std::string& path, const std::string& vfs, int64_t cache_kib,
                                std::atomic<bool>* stop);

// How far a checkpoint got: the frames the WAL held, and how many of them
// are now in the database file (both 0 when another checkpoint was running).
struct CheckpointResult {
  int wal_frames = 0;
  int copied_frames = 0;
};

// The database's pages as the committer's connection sees them: all of
// them (the file's size once checkpointed) and those on the freelist, which
// the store left behind as its backlog shrank.
struct FileSpace {
  int64_t page_size = 0;
  int64_t pages = 0;
  int64_t free_pages = 0;
  int64_t FreeBytes() const { return free_pages * page_size; }
  int64_t LiveBytes() const { return (pages - free_pages) * page_size; }
};

// A connection of its own that copies the WAL into the database file while
// the committer goes on committing (SQLite lets one checkpoint run beside
// the writer). For one thread other than the committer's.
class CheckpointConnection {
 public:
  static Result<std::unique_ptr<CheckpointConnection>> Open(const std::string& path, const std::string& vfs);
  explicit CheckpointConnection(Connection db) : db_(std::move(db)) {}

  // A PASSIVE checkpoint: copies what no reader still needs, waits for
  // nothing, and fsyncs the file before the WAL may be reused.
  Result<CheckpointResult> Run();

 private:
  Connection db_;
};

class OutboxDb {
 public:
  // Opens or creates the file, checks it (options.full_check), switches to
  // WAL with synchronous=FULL, migrates the schema and prepares every
  // statement.
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

  // Found damaged after open: the connection's close must leave the file
  // and its WAL as they are (no checkpoint), for the quarantine.
  Status KeepFilesAtClose();

  // Whether the next commits fsync the WAL (synchronous=FULL, the default)
  // or only write it (NORMAL: consistent after a power cut, but the last
  // such commits may be undone until a later FULL commit or SyncWal).
  Status SetDurableCommits(bool durable);
  // Whether the connection gathers each commit's WAL writes into one
  // (wal_write_vfs.h).
  Status SetWalGathering(bool on);
  // fsyncs the WAL file, making every commit so far durable.
  Status SyncWal();
  // Called after each commit with the number of frames in the WAL. Setting
  // it replaces SQLite's automatic checkpoints: the caller runs them.
  void SetWalHook(std::function<void(int frames)> hook);
  // A PASSIVE checkpoint on this connection (see CheckpointConnection::Run).
  Result<CheckpointResult> Checkpoint();
  int64_t PageSize() const { return page_size_; }
  int64_t WalCheckpointBytes() const { return wal_checkpoint_bytes_; }
  Result<FileSpace> Space();
  // Rewrites the database without its free pages (VACUUM) in one durable
  // transaction: a failure or a power cut leaves it as it was, and every
  // row keeps its sequence. Outside a transaction only; it costs about
  // twice the live pages in writes. The file shrinks once a checkpoint has
  // copied the whole rewrite.
  Status Compact();

  // The highest sequence ever assigned: the meta counter, or a higher
  // sequence found in a table.
  Result<int64_t> LastSequence();
  Status SetLastSequence(int64_t sequence);

  // The lowest sequence under which `id` is stored anywhere.
  Result<std::optional<StoredId>> FindId(std::string_view id);
  // Like FindId, looking in the outbox only (not the dead letters or the
  // delivered events): one index lookup instead of three.
  Result<std::optional<StoredId>> FindIdInOutbox(std::string_view id);
  // Whether the delivered-retention table holds no row.
  Result<bool> DeliveredEmpty();
  // Whether the outbox table holds no event (dead letters and delivered
  // events aside).
  Result<bool> EventsEmpty();
  // The sequence of `id` in the outbox itself (not dead letters or
  // delivered), if it is there.
  Result<std::optional<int64_t>> FindQueuedId(std::string_view id);
  Status InsertEvent(const NewEventRow& row);
  // Like InsertEvent, but false (and nothing stored) if an event with this
  // id is already in the outbox table (its unique index says so).
  Result<bool> InsertEventIfNew(const NewEventRow& row);
  // False if no such event is in the outbox.
  Result<bool> DeleteEvent(int64_t sequence);
  Result<std::optional<EventHead>> OldestInClass(Priority p);

  // Removes an acknowledged event, keeping a copy in `delivered` when
  // `retain`. False if no such event is in the outbox.
  Result<bool> RemoveDelivered(int64_t sequence, bool retain, int64_t now_us);
  // Removes the acknowledged events with a sequence in [first, last] (a run
  // every member of which was acknowledged) without keeping copies; returns
  // how many were there.
  Result<int64_t> RemoveDeliveredRange(int64_t first, int64_t last);
  // False if no such event is in the outbox.
  Result<bool> MoveToDeadLetters(int64_t sequence, std::string_view reason, int64_t now_us);

  Result<bool> AnyExpired(int64_t now_us);
  // Deletes up to `limit` expired events; returns how many.
  Result<int64_t> DeleteExpired(int64_t now_us, int64_t limit);
  Result<bool> AnyDeliveredUpTo(int64_t cutoff_us);
  Result<int64_t> PurgeDeliveredUpTo(int64_t cutoff_us, int64_t limit);

  // Deletes the events of class `p` at the head of its queue that were
  // accepted at or before `cutoff_us`, at most `limit`; returns how many.
  // Only the head: accepted times rise with the sequence, so the first
  // younger event ends the run without reading the rest of the class.
  Result<int64_t> DeleteOlderThan(Priority p, int64_t cutoff_us, int64_t limit);

  // Counts a delivery attempt for every event of class `p` up to `sequence`
  // that is not waiting for a retry time after `now_us` (a Nack counted
  // those already).
  Status AddAttempt(Priority p, int64_t up_to_sequence, int64_t now_us);

  // A transient delivery failure: one more attempt, and not leasable before
  // `not_before_us`. The event's class, or nothing if it is not there.
  Result<std::optional<Priority>> Nack(int64_t sequence, int64_t not_before_us);
  // Events whose retry time is after `now_us`.
  Status ReadWaiting(int64_t now_us, std::vector<WaitingRow>* out);

  // Appends up to `limit` unexpired events of class `p` with a sequence above
  // `after` and at most `up_to`, in sequence order, to `out`. Rows whose
  // record cannot be decoded go to `unreadable` instead. `*last_seen` is the
  // highest sequence read. Rows whose retry time is after `now_us` are
  // skipped.
  Status ReadLeasable(Priority p, int64_t after, int64_t up_to, int64_t now_us, size_t limit,
                      std::vector<LeasedEvent>* out, std::vector<std::pair<int64_t, Status>>* unreadable,
                      int64_t* last_seen);
  // The one event `sequence`, if it is there and unexpired, like ReadLeasable.
  Status ReadLeasableBySequence(int64_t sequence, int64_t now_us, std::vector<LeasedEvent>* out,
                                std::vector<std::pair<int64_t, Status>>* unreadable);

  // Dead letters with a sequence above `after`, oldest first, at most `limit`.
  Status ListDeadLetters(int64_t after, size_t limit, std::vector<DeadLetter>* out);
  // By sequence, or (sequence 0) the oldest with this id.
  Result<std::optional<DeadLetterRow>> FindDeadLetter(int64_t sequence, std::string_view id);
  // By sequence, or (sequence 0) every one with this id; returns how many.
  Result<int64_t> DeleteDeadLetters(int64_t sequence, std::string_view id);
  // The oldest `limit` dead letters; returns how many.
  Result<int64_t> DeleteOldestDeadLetters(int64_t limit);

  // Sequences of retained delivered events in `range`, ascending, at most
  // `limit`.
  Status SelectDelivered(const ReplayRange& range, size_t limit, std::vector<int64_t>* out);
  Result<std::optional<DeliveredRow>> ReadDelivered(int64_t sequence);

  // The unfinished clock shift, if any.
  Result<std::optional<ClockShift>> ReadClockShift();
  // Moves the times of the rows with shift.done_up_to < seq <= last (see
  // ClockShift), and records the shift as done up to `last` (or, at
  // shift.up_to, as finished). Returns how many rows changed. In a
  // transaction.
  Result<int64_t> ShiftTimes(const ClockShift& shift, int64_t last);
  // The lowest sequence in the store (0 when it holds none).
  Result<int64_t> FirstSequence();
  // Whether any event, delivered event or dead letter was accepted before
  // `floor_us`; the oldest and newest row of each table are read first, and
  // only if one of them was are the tables scanned.
  Result<std::optional<EarlyTimes>> FindAcceptedBefore(int64_t floor_us);

  // Counts and bytes per class and of the dead letters, kept in the
  // `totals` table (every method that adds or removes rows counts them;
  // Commit writes the sums in the same transaction), plus the oldest event
  // of each class: no table scan. Inside a transaction it includes what the
  // transaction changed so far.
  Result<StoreTotals> ReadTotals();

  // How many times SQLite recompiled a prepared statement of this
  // connection (a schema change, or a bound value the plan depends on).
  int64_t Recompilations() const;

 private:
  // Buckets of the totals table: the four classes, then the dead letters.
  static constexpr int64_t kBuckets = 5;
  // What the open transaction changed in the totals; written into the
  // totals table by Commit, in the same transaction.
  struct TotalsChange {
    std::array<int64_t, kBuckets> count{};
    std::array<int64_t, kBuckets> bytes{};
  };

  Status Prepare();
  // Topics (schema 4): every row's topic is looked up here, in memory.
  Status LoadTopics();
  void Remember(int64_t ref, std::string topic);
  // Undoes what the open transaction added to the maps.
  void ForgetNewTopics();
  // The ref under which `topic` is kept, storing it in the open transaction
  // if it is new; 0 when the table is full and the row keeps the text.
  Result<int64_t> TopicRef(std::string_view topic);
  // The topic of a row: the column's text, or the topic its ref names.
  Result<std::string> TopicColumn(const Statement& stmt, int column);

  // Counts `count` rows (negative: removed) of `bytes` each into `bucket`.
  Status Count(int64_t bucket, int64_t count, int64_t bytes);
  // Steps a DELETE ... RETURNING bucket, bytes to its end, counting each
  // row as removed (and as added to `moved_to_bucket` if >= 0). The rows.
  Result<int64_t> RunRemoving(Statement& stmt, int64_t moved_to_bucket = -1);

  // The connection is declared first so it is destroyed last, after every
  // statement prepared on it.
  Connection db_;
  int64_t page_size_ = 1024;
  int64_t wal_checkpoint_bytes_ = kDefaultWalCheckpointBytes;
  std::function<void(int)> wal_hook_;
  Statement begin_, commit_, rollback_, savepoint_, release_, rollback_to_;
  Statement last_sequence_, set_last_sequence_;
  Statement find_id_, find_id_in_outbox_, find_queued_id_, insert_event_, any_delivered_row_, any_event_row_;
  Statement copy_to_delivered_, delete_event_, delete_event_range_, copy_to_dlq_;
  Statement any_expired_, delete_expired_, any_delivered_, purge_delivered_;
  Statement class_head_, delete_class_up_to_;
  Statement add_attempt_, nack_, read_waiting_, read_class_, read_one_, read_totals_, oldest_in_class_;
  Statement list_dlq_, find_dlq_by_seq_, find_dlq_by_id_, delete_dlq_by_seq_, delete_dlq_by_id_, delete_oldest_dlq_;
  Statement delivered_by_seq_, delivered_by_time_, read_delivered_;
  Statement add_to_totals_;
  Statement page_count_, freelist_count_;
  Statement read_shift_, write_shift_, clear_shift_, shift_events_, shift_delivered_, shift_dlq_, first_sequence_;
  Statement table_ends_, accepted_before_;
  Statement find_topic_, add_topic_, topic_by_ref_;
  struct TopicHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int64_t, TopicHash, std::equal_to<>> topic_refs_;
  std::unordered_map<int64_t, std::string> topic_names_;
  // Added to the maps by the open transaction.
  std::vector<std::pair<std::string, int64_t>> new_topics_;
  TotalsChange change_;
  TotalsChange change_at_savepoint_;
};

}  // namespace ws::sqlite
