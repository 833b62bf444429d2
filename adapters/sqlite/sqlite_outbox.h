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
#include <functional>
#include <memory>
#include <string>

#include "core/outbox.h"
#include "core/outbox_policy.h"
#include "core/wall_clock_watch.h"
#include "platform/clock.h"
#include "platform/status.h"

namespace ws {

struct SqliteOutboxOptions {
  std::string path;                                      // the database file; its folder is created if missing
  uint64_t max_bytes = 268435456;                        // appends beyond this fail with kResourceExhausted
  uint64_t control_reserve_bytes = 0;                    // the top of max_bytes that only control events may fill
  ClassLimitsArray classes = DefaultClassLimitsArray();  // per class, see core/outbox_policy.h
  int64_t retain_delivered_s = 0;
  int64_t commit_window_us = 8000;  // how long a batch may wait for more appends (see GatherAppends)
  // A batch closes at this many events (a single larger call goes alone).
  // At most half of what the node's API keeps waiting for commits (2,048
  // events): one batch then commits while the next one gathers. With the
  // link up and 64 producers posting batches of 100, 4,096 here (one batch
  // held everything waiting, and the API stood idle through its commit)
  // accepted 120,000-130,000 events/s and 1,024 accepted 144,000-152,000.
  size_t max_batch_events = 1024;
  int64_t cache_kib = 2048;         // SQLite page cache cap (keeps RSS small with any backlog)
  // The WAL is copied into the database file once it holds this much; the
  // -wal file is kept at up to twice that (more for a moment, should the
  // checkpoints fall behind: the committer copies everything at four
  // times). Larger writes less to the flash when a backlog builds (most of
  // all with random ids), at the price of that much more file beside the
  // database and a longer recovery of the WAL after a crash.
  int64_t wal_checkpoint_bytes = kDefaultWalCheckpointBytes;
  Clock* clock = nullptr;           // nullptr = SystemClock()
  // A registered SQLite VFS by name; empty = SQLite's default. Lets tests
  // put a disk that fails on demand under the store.
  std::string vfs;
  // Files up to this size are checked in full (PRAGMA quick_check) at every
  // open. A larger file gets the structural check at open and the full one
  // on a background thread; until that check has passed, new events wait
  // in the intake log (below) and nothing else touches the file, so damage
  // it finds is moved aside at once and those events go into a fresh
  // store. Without the intake log, a larger file is checked in full at
  // open after an unclean shutdown in an earlier boot (a power cut). A
  // file a background check found damaged is always checked in full at
  // open. The check reads about 3 ms per MB on the benchmark
  // machine (112 ms for 33 MB), so 16 MiB keeps every start that trusts
  // the file well under 200 ms; at that rate a store just under 64 MiB (the
  // size until 2026-11-23) would take about 200 ms to check at every start.
  uint64_t full_check_max_bytes = 16 * 1024 * 1024;
  // Gives disk space back once a backlog has drained: when at least
  // compact_min_free_bytes of the file are free pages and at most
  // compact_max_live_bytes are in use, the once-a-second maintenance
  // rewrites the file without the free pages. A drained outage backlog
  // otherwise keeps its size on the card, and a new backlog is written
  // into those old pages, which the kernel has to read back first unless
  // they are still cached. 0 in either = never.
  uint64_t compact_min_free_bytes = 32 * 1024 * 1024;
  uint64_t compact_max_live_bytes = 2 * 1024 * 1024;
  // Accepted times before this were stamped by a clock that was not set.
  // Once the clock is past it, Open moves such times to the present (see
  // "Wall clock" below). 0 = never.
  int64_t earliest_plausible_wall_us = kEarliestPlausibleWallUs;
  // New events become durable in the intake log beside the file
  // (`<path>-intake`, see adapters/sqlite/intake_log.h) and reach the
  // database only if the link has not delivered them within about a
  // second. false: every event is written into the database. Either way a
  // log left by an earlier run is read back at open. Off while delivered
  // events are kept (retain_delivered_s > 0).
  bool intake_log = true;
  // Tests: runs on the background check's thread before the check reads
  // the file (to hold it while the test appends).
  std::function<void()> before_background_check;
};

// Meanings specific to this store:
//  - max_bytes counts, per event, its encoded record plus topic and stream,
//    over the backlog and the dead letters together; retained delivered
//    events do not count (they leave after retain_delivered_s).
//  - Expired events are removed when Lease runs and about once a second
//    (busy or idle); delivered events past retention likewise.
//  - LeasedEvent::attempts counts earlier leases of the event that ended
//    without an ack (counted by Nack, or when ResetLeases runs).
//  - Stats().commits counts the transactions that stored at least one new
//    event, so appended_events / commits is the mean group size;
//    rejected_full counts the events of calls refused for max_bytes.
//  - An event id is "already stored" while it is in the outbox, the
//    dead-letter queue or delivered retention.
//  - Class limits and the overflow policy apply to every event entering the
//    outbox: appends, dead letters retried and replays. drop_oldest removes
//    events inside the transaction that needs the room (counted
//    removed_dropped_overflow); a refusal leaves everything as it was.
//  - max_age_s removes events whose accepted time is older (counted
//    removed_expired), from the head of each class (accepted times rise
//    with the sequence). A retried dead letter or a replayed event is
//    accepted anew (its accepted time is the retry's) and carries no TTL.
//  - Wall clock: when it is set (a step of more than 2 s against the
//    steady clock), the accepted, expiry, retry, delivered and
//    dead-lettered times of every row stored before move by the step, in
//    transactions of 8,192 sequences that record their progress (a restart
//    finishes the move), before anything is judged by the new clock; so
//    TTLs, max_age_s, retention and retry times count the time that passed
//    while the node ran. At Open, with the clock past
//    earliest_plausible_wall_us, times stamped before that (a gateway that
//    booted without the time and restarted after it was set) move so that
//    the newest of them is the present. Stats().clock_steps counts both;
//    while a move cannot finish (a full disk), Stats().clock_shift_pending
//    is set, nothing is removed for its age, and leases judge times by the
//    clock as it was. Time spent suspended counts as a step.
//  - A nacked event is leased again, ahead of newer events of its class,
//    once its retry time has come. ResetLeases counts an attempt for leased
//    events except those waiting for a retry time (their Nack counted it).
//  - Replay needs delivered retention; without it the call fails with
//    kFailedPrecondition. One call re-sends at most 100000 events (more is
//    kInvalidArgument); ids still queued are skipped, not counted.
//  - Purging every dead letter runs in chunks of a few thousand, each its
//    own transaction.
//  - Ack commits without an fsync of its own: the next Append's commit, or
//    the maintenance pass within about a second, makes it durable. A power
//    cut before that undoes it, and the events are leased (sent) again.
//  - Stats().ack_latency_* observe every event of every successful Append
//    call: from the call to the commit returning, on the steady clock.
//  - Clean shutdown: after the destructor closed the database (WAL
//    checkpointed and removed) it writes "<path>.clean", and "<path>.boot"
//    names the boot a store is open in until then. Open checks a large file
//    in the background (see full_check_max_bytes). While that check runs,
//    Append calls whose events the intake log can take are answered from
//    it; every other call (leases, acks, dead-letter calls, replays, and
//    appends with a TTL or that would need room made) waits for the check,
//    and Stats().integrity_check_running is set. When the check finds
//    damage, the file is moved aside like a damaged file at open, a fresh
//    store starts with the held events, and
//    Stats().quarantined_while_running is set; if that cannot be done
//    (the rename or the new file fails), "<path>.needs-check" stays,
//    Stats().integrity_failed is set, and the store keeps trying once a
//    second while held appends wait.
class SqliteOutbox final : public Outbox {
 public:
  // Opens (or creates) the store, checks its integrity (see
  // full_check_max_bytes), migrates the schema (PRAGMA user_version) and
  // starts the committer thread. A damaged file is moved aside as
  // "<path>.corrupt-<UTC>" (with its -wal/-shm) and a fresh store is
  // started; Stats().quarantined_at_start tells.
  static Result<std::unique_ptr<SqliteOutbox>> Open(SqliteOutboxOptions options);
  // Finishes queued work, stops the threads, closes the file and marks the
  // shutdown clean.
  ~SqliteOutbox() override;

  void Append(std::vector<OutboxEntry> entries, AppendDone done) override;
  void Lease(size_t max_events, LeaseDone done) override;
  void Ack(std::vector<int64_t> sequences, StatusDone done) override;
  void ResetLeases() override;
  void DeadLetter(int64_t sequence, std::string reason, StatusDone done) override;
  void Nack(std::vector<int64_t> sequences, int64_t retry_in_us, StatusDone done) override;
  void ListDeadLetters(int64_t after_sequence, size_t limit,
                       std::function<void(Result<std::vector<ws::DeadLetter>>)> done) override;
  void RetryDeadLetter(int64_t sequence, std::string id, std::function<void(Result<AppendOutcome>)> done) override;
  void PurgeDeadLetters(int64_t sequence, std::string id, std::function<void(Result<uint64_t>)> done) override;
  void Replay(const ReplayRange& range, std::function<void(Result<uint64_t>)> done) override;
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
