#include "adapters/sqlite/sqlite_outbox.h"

#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "adapters/sqlite/intake_log.h"
#include "adapters/sqlite/outbox_db.h"
#include "platform/file_system.h"
#include "platform/log.h"
#include "platform/process_stats.h"

namespace ws {
namespace {

constexpr std::string_view kComponent = "outbox";

// Expiry and retention deletes run in chunks of this many rows, each its own
// transaction, so a mass expiry never builds one huge WAL.
constexpr int64_t kSweepChunk = 2048;

// How often the store looks for expired events and stale deliveries.
constexpr auto kMaintenanceInterval = std::chrono::seconds(1);
// Acks wait for an append to share their commit only while append batches
// ran within this many commit windows (see WaitForAppendAfterAcks).
constexpr int kAppendsExpectedWindows = 4;
// A clock shift (see Now) moves the times of this many sequences per
// transaction, so a shift over a large backlog never builds one huge WAL.
constexpr int64_t kClockShiftChunk = 8192;
// After a failed compaction (a full disk, say), the next try.
constexpr auto kCompactRetry = std::chrono::minutes(10);
// The meta row holds a ceiling over every sequence handed out, raised this
// far ahead, so that most commits leave that row (one more page written per
// commit) alone. After a crash the sequence goes on from the ceiling: a gap,
// never a sequence given twice. A clean shutdown writes the exact value.
constexpr int64_t kSequenceReserve = 1024;

// The intake log (intake_log.h) beside the database file.
constexpr const char* kIntakeSuffix = "-intake";
// Events held only in the intake log move into the database (settle) once
// the oldest has waited this long (the link is down or slow), ...
constexpr int64_t kIntakeHoldUs = 1'000'000;
// ... or once they hold this many bytes, or the log has grown this large.
constexpr uint64_t kIntakeMaxHeldBytes = 4 << 20;
constexpr int64_t kIntakeMaxLogBytes = 8 << 20;
// New events go straight into the database while it holds more than this
// many undelivered events.
constexpr uint64_t kIntakeMaxDatabaseBacklog = 4096;
// Past this length the log starts over at its beginning (at once when
// nothing is held, else by settling at the next once-a-second tick): its
// blocks are then rewritten rather than new ones dirtied.
constexpr int64_t kIntakeRestartBytes = 768 << 10;
// The fewest and the most batches that skip the linger wait after one that
// gained nothing (see Linger).
constexpr size_t kMinLingerBackoff = 16;
constexpr size_t kMaxLingerBackoff = 1024;
// While a batch gathers, the committer wakes to store the calls that came
// in whenever this many (or all that are missing) are queued: often enough
// that storing overlaps the producers' way back, rarely enough that wakes
// stay a small part of a commit.
constexpr size_t kStoreWhileGathering = 16;

// One Replay re-sends at most this many events: one transaction, so its WAL
// (about 200 bytes per event) stays a few tens of MiB.
constexpr size_t kMaxReplayEvents = 100000;

constexpr const char* kCleanSuffix = ".clean";
constexpr const char* kNeedsCheckSuffix = ".needs-check";
// Names the boot in which the store was last opened (and had passed the
// checks its open called for), until a clean shutdown removes it.
constexpr const char* kBootSuffix = ".boot";

Status ShuttingDown() { return Status(StatusCode::kCancelled, "the outbox is shutting down"); }

// What one event counts against max_bytes: what the row holds.
uint64_t StoredBytes(const OutboxEntry& e, const std::string& record) {
  return record.size() + e.topic.size() + e.stream.size();
}

// 20261121T101500Z
std::string CompactUtc(int64_t wall_us) {
  time_t secs = static_cast<time_t>(wall_us / 1'000'000);
  tm utc{};
  if (gmtime_r(&secs, &utc) == nullptr) return "unknown-time";
  char buf[80];  // room for any int the fields could hold, so no truncation
  std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02dZ", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday,
                utc.tm_hour, utc.tm_min, utc.tm_sec);
  return buf;
}

// Moves a damaged store aside as "<path>.corrupt-<UTC>" with its -wal and
// -shm, never deleting anything. The -wal goes first: a WAL left next to a
// fresh database would be replayed into it. Returns the new base name.
Result<std::string> Quarantine(const std::string& path, const Clock& clock) {
  static constexpr std::array<const char*, 3> kSuffixes = {"-wal", "-shm", ""};
  const std::string base = path + ".corrupt-" + CompactUtc(clock.WallMicros());
  std::string target = base;
  // Two quarantines within a second (a crash loop) must not overwrite the
  // first evidence.
  for (int n = 1;; ++n) {
    bool taken = false;
    for (const char* suffix : kSuffixes) taken = taken || PathExists(target + suffix);
    if (!taken) break;
    target = base + "-" + std::to_string(n);
  }
  for (const char* suffix : kSuffixes) {
    if (!PathExists(path + suffix)) continue;
    WS_TRY(RenameDurably(path + suffix, target + suffix).WithContext("quarantine"));
  }
  return target;
}

// Size of a regular file; nullopt when it does not exist or cannot be read.
std::optional<uint64_t> FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

std::string CleanMarkerText(uint64_t size) {
  return "waystation outbox closed cleanly\nsize=" + std::to_string(size) + "\n";
}

std::string BootMarkerText(std::string_view boot_id) {
  return "waystation outbox open in boot\nboot_id=" + std::string(boot_id) + "\n";
}

// How much Open checks, and why (for the log).
struct CheckPlan {
  bool full = true;
  bool background = false;
  std::string why;
};

// The full check reads every page: it runs at open whenever that is cheap
// (a small file) or damage was already found. A large file gets the
// structural check at open and the full one in the background, so the node
// collects events again within a fraction of a second. With `can_hold` (the
// store has an intake log) new events wait there until that check has
// passed, so a file it finds damaged takes none of them and can be moved
// aside while running: then any large file is checked in the background.
// Without, the file is written to while the check runs, so only a file
// that is as trusted as after a clean shutdown gets it: a clean shutdown,
// or a run that ended without closing in the current boot (`boot_id`;
// empty = unknown): a killed or crashed process leaves its writes in the
// page cache, and SQLite recovers from its WAL what such a stop
// interrupted. Only a power cut or a reboot can lose or tear writes the
// storage had not made durable, and a restart after one is a new boot.
CheckPlan PlanCheck(const std::string& path, uint64_t full_check_max_bytes, std::string_view boot_id,
                    bool can_hold) {
  const std::optional<uint64_t> size = FileSize(path);
  if (!size.has_value() || *size == 0) return {true, false, "new store"};
  if (PathExists(path + kNeedsCheckSuffix)) return {true, false, "the last background check found damage"};
  if (*size <= full_check_max_bytes) return {true, false, "small file"};
  // A running store always has a -wal file; one left with content means the
  // last run did not close, whatever the marker says.
  const std::optional<uint64_t> wal = FileSize(path + "-wal");
  const bool wal_left = wal.has_value() && *wal > 0;
  std::string why;
  if (!wal_left) {
    if (Result<std::string> marker = ReadFile(path + kCleanSuffix); marker.ok()) {
      if (*marker == CleanMarkerText(*size)) return {false, true, "clean shutdown"};
      why = "the file changed since its clean shutdown";
    }
  }
  if (why.empty() && !boot_id.empty()) {
    Result<std::string> ran_in = ReadFile(path + kBootSuffix);
    if (ran_in.ok() && *ran_in == BootMarkerText(boot_id)) {
      return {false, true, "the last run stopped without closing, in this boot (no power cut since)"};
    }
  }
  if (why.empty()) {
    why = wal_left ? "the last shutdown was not clean (WAL left behind)"
                   : "the last shutdown was not clean (no marker)";
  }
  if (can_hold) return {false, true, why + "; new events wait in the intake log until the check passes"};
  return {true, false, why};
}

// Best effort: a marker that cannot be removed is logged. A stale clean
// marker cannot mislead the next open, which also requires the WAL gone.
void RemoveMarker(const std::string& path) {
  if (::unlink(path.c_str()) == 0 || errno == ENOENT) return;
  WS_LOG_WARN(kComponent, "could not remove a marker file",
              {{"path", path}, {"error", ErrnoStatus(errno, "unlink").ToString()}});
}

// The database row of an event held in the intake log (no TTL, no replay).
sqlite::NewEventRow RowOf(const sqlite::IntakeEvent& e) {
  return sqlite::NewEventRow{e.sequence, e.id,    e.priority, e.stream, e.topic,   e.accepted_us,
                             0,          e.bytes, e.record,   0,        e.attempts};
}

struct AppendOp {
  std::vector<OutboxEntry> entries;
  Outbox::AppendDone done;
  std::chrono::steady_clock::time_point called;  // for the ack latency histogram
};
struct LeaseOp {
  size_t max_events;
  Outbox::LeaseDone done;
};
struct AckOp {
  std::vector<int64_t> sequences;
  Outbox::StatusDone done;
};
struct ResetLeasesOp {};
struct DeadLetterOp {
  int64_t sequence;
  std::string reason;
  Outbox::StatusDone done;
};
struct NackOp {
  std::vector<int64_t> sequences;
  int64_t retry_in_us;
  Outbox::StatusDone done;
};
struct ListDeadLettersOp {
  int64_t after_sequence;
  size_t limit;
  std::function<void(Result<std::vector<DeadLetter>>)> done;
};
struct RetryDeadLetterOp {
  int64_t sequence;
  std::string id;
  std::function<void(Result<AppendOutcome>)> done;
};
struct PurgeDeadLettersOp {
  int64_t sequence;
  std::string id;
  std::function<void(Result<uint64_t>)> done;
};
struct ReplayOp {
  ReplayRange range;
  std::function<void(Result<uint64_t>)> done;
};
using Op = std::variant<AppendOp, LeaseOp, AckOp, ResetLeasesOp, DeadLetterOp, NackOp, ListDeadLettersOp,
                        RetryDeadLetterOp, PurgeDeadLettersOp, ReplayOp>;

// What a write transaction has done so far: the store's usage as it left
// it (what the limits are judged against), and what it added and dropped.
struct BatchTally {
  int64_t last_sequence = 0;
  int64_t sequence_ceiling = 0;  // what the meta row says
  StoreUsage usage;
  uint64_t new_events = 0;
  uint64_t dropped = 0;  // removed by drop_oldest
  std::array<uint64_t, kPriorityCount> added{};
};

// An append batch whose transaction is open while it gathers: each call is
// stored as soon as the committer takes it, so the inserts overlap the
// producers' way back with their next events, and the commit follows the
// last arrival at once.
struct OpenBatch {
  std::vector<AppendOp> ops;
  std::vector<AckOp> acks;
  size_t events = 0;        // events in ops
  size_t stored = 0;        // ops stored in the transaction so far
  size_t acks_applied = 0;  // acks removed in the transaction so far
  int64_t now = 0;          // the accepted time of every event in it
  BatchTally tally;
  // A storage failure (disk full, I/O error) dooms the whole transaction;
  // a request's own rejection (duplicate id with other content, store
  // full) is undone by its savepoint and the others still commit.
  Status storage;
  bool begun = false;
  size_t failed_at = SIZE_MAX;  // the request during which storage failed, if any
  std::vector<Result<std::vector<AppendOutcome>>> results;  // one per stored op
  int64_t acked_removed = 0;
  std::optional<sqlite::StoreTotals> after_acks;
  // The intake: the batch's events that go to the intake log instead of
  // the database (until `direct`), and where each id is among them.
  std::vector<sqlite::IntakeEvent> intake;
  std::unordered_map<std::string, size_t> intake_ids;
  // Held events its acks removed, with the index of the ack in `acks`.
  std::vector<std::pair<size_t, sqlite::IntakeEvent>> held_taken;
  bool direct = false;   // the batch writes its events into the database
  bool settled = false;  // held events moved into the database in its transaction
  // Whether the database's outbox table held no event, asked once by the
  // batch's first intake event that needs to know. Within the batch it
  // can only lose events (acks): it gains some only once `direct`, and
  // then no event goes to the intake.
  std::optional<bool> outbox_table_empty;
  // While gated: the calls (indexes in ops) that wait for the check.
  std::vector<size_t> held_back;
};

}  // namespace

class SqliteOutbox::Impl {
 public:
  Impl(SqliteOutboxOptions options, Clock* clock, std::unique_ptr<sqlite::OutboxDb> db,
       const sqlite::OpenReport& report, bool quarantined)
      : options_(std::move(options)),
        clock_(clock),
        db_(std::move(db)),
        last_sequence_(report.last_sequence),
        sequence_ceiling_(report.last_sequence) {
    limits_.max_bytes = options_.max_bytes;
    limits_.control_reserve_bytes = options_.control_reserve_bytes;
    limits_.classes = options_.classes;
    ApplyTotals(report.totals);
    stats_.last_sequence = report.last_sequence;
    stats_.quarantined_at_start = quarantined;
  }

  ~Impl() { Shutdown(); }

  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Reads back the retry times Nack left in the file (the committer thread
  // has not started yet, so this thread may use the connection).
  // Whether delivered events can exist (kept for replay now, or left from a
  // run that kept them). Before the committer thread starts.
  Status LoadDeliveredState() {
    if (options_.retain_delivered_s > 0) {
      delivered_empty_ = false;
      return Status::Ok();
    }
    WS_ASSIGN_OR_RETURN(delivered_empty_, db_->DeliveredEmpty());
    return Status::Ok();
  }

  // At open: finishes a shift a restart interrupted, or, once the clock is
  // plausible, moves times stamped while it was not (a gateway that booted
  // without the time, took events, and restarted after the time was set)
  // so that the newest of them is now. Never fails the open.
  void PrepareClockShift() {
    Result<std::optional<sqlite::ClockShift>> pending = db_->ReadClockShift();
    if (!pending.ok()) {
      WS_LOG_ERROR(kComponent, "reading an unfinished clock shift failed", {{"error", pending.status().ToString()}});
      return;
    }
    const Clock::Reading r = clock_->ReadBoth();
    const int64_t now = r.wall_us;
    clock_watch_.Observe(now, r.mono_ns / 1000);
    if (pending->has_value()) {
      shift_ = **pending;
      WS_LOG_WARN(kComponent, "finishing the move of stored times after a clock change",
                  {{"step_s", std::to_string(static_cast<double>(shift_->delta_us) / 1e6)},
                   {"from_sequence", std::to_string(shift_->done_up_to + 1)},
                   {"up_to_sequence", std::to_string(shift_->up_to)}});
    } else {
      const int64_t floor = options_.earliest_plausible_wall_us;
      if (floor <= 0 || now < floor) return;
      Result<std::optional<sqlite::EarlyTimes>> early = db_->FindAcceptedBefore(floor);
      if (!early.ok()) {
        WS_LOG_ERROR(kComponent, "looking for times stamped before the clock was set failed",
                     {{"error", early.status().ToString()}});
        return;
      }
      if (!early->has_value()) return;
      const sqlite::EarlyTimes& e = **early;
      shift_ = sqlite::ClockShift{now - e.newest_us, e.last_sequence, std::max<int64_t>(e.first_sequence - 1, 0),
                                  floor};
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.clock_steps;
      }
      WS_LOG_WARN(kComponent, "events were stored while the wall clock was not set; their times move to now",
                  {{"newest_stamp_us", std::to_string(e.newest_us)},
                   {"up_to_sequence", std::to_string(e.last_sequence)}});
    }
    FinishClockShift();
  }

  // Before Start: the intake log OpenIntake opened (null: none), and the
  // events it left there to wait for the background check (with the
  // highest sequence the log names; `totals`: the database's).
  void SetIntake(std::unique_ptr<sqlite::IntakeLog> log, std::vector<sqlite::IntakeEvent> held, int64_t highest,
                 const sqlite::StoreTotals& totals) {
    intake_ = std::move(log);
    for (sqlite::IntakeEvent& e : held) {
      held_usage_[static_cast<size_t>(e.priority)].count += 1;
      held_usage_[static_cast<size_t>(e.priority)].bytes += e.bytes;
      held_ids_.emplace(e.id, e.sequence);
      const int64_t seq = e.sequence;
      held_.emplace(seq, std::move(e));
    }
    // The meta row's ceiling stays as the database has it: the log covers
    // these sequences until the gate opens and writes the ceiling.
    last_sequence_ = std::max(last_sequence_, highest);
    ApplyTotals(totals);
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.last_sequence = last_sequence_;
  }

  Status LoadWaiting() {
    std::vector<sqlite::WaitingRow> rows;
    WS_TRY(db_->ReadWaiting(JudgeTime(clock_->WallMicros()), &rows));
    for (const sqlite::WaitingRow& r : rows) waiting_[static_cast<size_t>(r.priority)][r.sequence] = r.not_before_us;
    return Status::Ok();
  }

  // With `background_check` and an intake log, the store is gated until
  // that check ends: appends the log can take are answered from it, and
  // everything else that would touch the file waits (see TryOpenGate).
  void Start(bool background_check) {
    if (background_check) {
      gated_ = intake_ != nullptr;
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        stats_.integrity_check_running = true;
      }
      check_thread_ = std::thread([this] { RunBackgroundCheck(); });
      static_cast<void>(pthread_setname_np(check_thread_.native_handle(), "ws-outbox-check"));
    }
    thread_ = std::thread([this] { Run(); });
    // The name only helps top/gdb; failing to set it changes nothing.
    static_cast<void>(pthread_setname_np(thread_.native_handle(), "ws-outbox"));
  }

  // Refuses new calls, stops the background check, lets the committer
  // finish what is queued, joins it, closes the database and, if that left
  // no WAL behind, marks the shutdown clean. Idempotent. Not from the
  // committer thread itself.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    check_stop_ = true;
    if (check_thread_.joinable()) check_thread_.join();
    if (thread_.joinable()) thread_.join();
    {
      std::lock_guard<std::mutex> lock(ckpt_mu_);
      ckpt_stop_ = true;
    }
    ckpt_cv_.notify_all();
    if (ckpt_thread_.joinable()) ckpt_thread_.join();
    // Closed first: the committer's connection, closing last, checkpoints
    // what is left and removes the WAL.
    checkpointer_.reset();
    CloseDatabase();
  }

  // Checkpoints on a connection and thread of their own, so that copying
  // the WAL into the file (reading back blocks the page cache dropped,
  // writing, an fsync of the file) does not stop the commits: with 64
  // producers posting 1.5 million events in batches of 100, 149 commits
  // that checkpointed (longer than 3 ms, up to 22.5 ms) took 1.4 s of a
  // 9.3 s run. The committer copies only the last
  // frames itself, which lets the next transaction start the WAL over; a
  // WAL that grows past four times the checkpoint size (the background
  // cannot keep up) is copied by the committer at once. Without a second
  // connection the committer checkpoints as SQLite does by default.
  void StartCheckpoints() {
    Result<std::unique_ptr<sqlite::CheckpointConnection>> c =
        sqlite::CheckpointConnection::Open(options_.path, options_.vfs);
    if (!c.ok()) {
      WS_LOG_WARN(kComponent, "no connection for background checkpoints; the committer runs them",
                  {{"error", c.status().ToString()}});
      return;
    }
    checkpointer_ = std::move(c).value();
    const int soft = static_cast<int>(std::max<int64_t>(db_->WalCheckpointBytes() / db_->PageSize(), 1));
    db_->SetWalHook([this, soft](int frames) { OnWalFrames(frames, soft); });
    ckpt_thread_ = std::thread([this] { RunCheckpoints(); });
    static_cast<void>(pthread_setname_np(ckpt_thread_.native_handle(), "ws-outbox-ckpt"));
  }

  // After each commit (the committer thread, inside SQLite's commit).
  void OnWalFrames(int frames, int soft) {
    std::unique_lock<std::mutex> lock(ckpt_mu_);
    if (frames < ckpt_copied_) ckpt_copied_ = 0;  // the WAL started over
    if (frames < soft) return;
    const bool finish = frames >= 4 * soft || (!ckpt_running_ && frames - ckpt_copied_ <= soft / 4);
    if (!finish) {
      if (!ckpt_running_ && !ckpt_stop_) {
        ckpt_running_ = true;
        ckpt_wanted_ = true;
        lock.unlock();
        ckpt_cv_.notify_one();
      }
      return;
    }
    lock.unlock();
    Result<sqlite::CheckpointResult> r = db_->Checkpoint();
    lock.lock();
    NoteCheckpoint(r, false);
  }

  void RunCheckpoints() {
    std::unique_lock<std::mutex> lock(ckpt_mu_);
    for (;;) {
      ckpt_cv_.wait(lock, [this] { return ckpt_stop_ || ckpt_wanted_; });
      if (ckpt_stop_) return;
      ckpt_wanted_ = false;
      lock.unlock();
      Result<sqlite::CheckpointResult> r = checkpointer_->Run();
      lock.lock();
      NoteCheckpoint(r, true);
      ckpt_running_ = false;
    }
  }

  // Under ckpt_mu_. A failed checkpoint loses nothing (the WAL keeps the
  // frames and grows); it is logged once until one succeeds again.
  void NoteCheckpoint(const Result<sqlite::CheckpointResult>& r, bool background) {
    if (!r.ok()) {
      if (!ckpt_failing_) WS_LOG_WARN(kComponent, "checkpoint failed", {{"error", r.status().ToString()}});
      ckpt_failing_ = true;
      return;
    }
    ckpt_failing_ = false;
    if (r->wal_frames == 0) return;  // another checkpoint was running
    ckpt_copied_ = r->copied_frames;
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++(background ? stats_.checkpoints_background : stats_.checkpoints_committer);
  }

  // Queues `op`; false (and `op` untouched) once shutdown has begun.
  template <typename T>
  bool Enqueue(T& op) {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return false;
      queue_.emplace_back(std::move(op));
      // While the committer gathers a batch it is woken only when the batch
      // is complete or something else must run; not by every producer.
      constexpr bool gathered = std::is_same_v<T, AppendOp> || std::is_same_v<T, AckOp>;
      if (!gathered) ++others_queued_;
      wake = committer_waiting_ && (!gathered || queue_.size() >= wake_at_queued_);
    }
    if (wake) cv_.notify_one();
    return true;
  }

  void SetListener(std::function<void()> listener) {
    auto shared = listener ? std::make_shared<const std::function<void()>>(std::move(listener)) : nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    listener_ = std::move(shared);
  }

  OutboxStats Stats() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }

 private:
  // ---- shutdown (the thread that destroys the outbox, after the joins) ----

  void CloseDatabase() {
    if (db_ == nullptr) return;
    if (intake_ != nullptr) {
      // A clean stop leaves every event in the database, unless it is still
      // gated: an unchecked file takes none (the next start holds them again).
      if (Status s = gated_ ? Status::Ok() : Settle(); !s.ok()) {
        WS_LOG_WARN(kComponent, "could not move held events into the database at shutdown; the next start does",
                    {{"error", s.ToString()}});
      }
      // The acks not yet in the log must not bring their events back at
      // the next start: with nothing held the log starts over, else they
      // are written. A write that failed once is tried once more.
      auto finish = [this] {
        if (held_.empty()) return intake_->clean() ? Status::Ok() : intake_->Clear();
        return unwritten_marks_.empty() ? Status::Ok() : intake_->Write({}, unwritten_marks_, /*sync=*/true);
      };
      // Gated, the log stays as it is: it holds the events (no ack can
      // have come) and covers sequences the meta row does not.
      Status s = gated_ ? Status::Ok() : finish();
      if (!s.ok()) s = finish();
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, "could not write the last acks into the intake log; their events are sent again",
                    {{"error", s.ToString()}});
      }
      intake_.reset();
    }
    db_->SetWalHook(nullptr);  // the checkpoint thread is gone
    // The exact last sequence instead of the ceiling, so that a clean
    // restart goes on without a gap. If this fails the ceiling stands.
    if (!gated_ && sequence_ceiling_ != last_sequence_) {
      Status s = db_->Begin();
      if (s.ok()) s = db_->SetLastSequence(last_sequence_);
      if (s.ok()) s = db_->Commit();
      if (!s.ok()) {
        db_->Rollback();
        WS_LOG_WARN(kComponent, "could not write the last sequence at shutdown; the next start skips ahead",
                    {{"error", s.ToString()}});
      }
    }
    // The last connection to close checkpoints the WAL into the file and
    // deletes it; a WAL still there means that did not happen.
    db_.reset();
    bool damaged = false;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      damaged = stats_.integrity_failed;
    }
    if (damaged || PathExists(options_.path + "-wal")) return;
    const std::optional<uint64_t> size = FileSize(options_.path);
    if (!size.has_value()) return;
    Status s = AtomicWriteFile(options_.path + kCleanSuffix, CleanMarkerText(*size));
    if (!s.ok()) {
      // Only costs the next start a full check (unless in this same boot).
      WS_LOG_WARN(kComponent, "could not mark the shutdown clean", {{"error", s.ToString()}});
      return;
    }
    RemoveMarker(options_.path + kBootSuffix);
  }

  // ---- background check thread ----

  void RunBackgroundCheck() {
    if (options_.before_background_check) options_.before_background_check();
    const auto start = std::chrono::steady_clock::now();
    Status s = sqlite::FullCheckOnOwnConnection(options_.path, options_.vfs, options_.cache_kib, &check_stop_);
    NoteCheckDone(s);
    const std::string ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count());
    if (s.ok()) {
      WS_LOG_INFO(kComponent, "background integrity check passed", {{"path", options_.path}, {"check_ms", ms}});
    } else if (s.code() == StatusCode::kDataLoss) {
      // Gated, the committer moves the file aside now (TryOpenGate); the
      // marker stands for the case that this cannot be done or the process
      // ends first. Without the gate the file stays in use (quarantining
      // under the committer's feet would stop collection), and the next
      // start checks in full first and moves it aside.
      Status marked = AtomicWriteFile(options_.path + kNeedsCheckSuffix, s.ToString() + "\n");
      WS_LOG_ERROR(kComponent,
                   intake_ != nullptr ? "ALARM: the background integrity check found damage; the store is moved "
                                        "aside and a fresh one takes the events held meanwhile"
                                      : "ALARM: the background integrity check found damage; the store will be "
                                        "checked in full and quarantined at the next start",
                   {{"path", options_.path},
                    {"error", s.ToString()},
                    {"marker", marked.ok() ? options_.path + kNeedsCheckSuffix : marked.ToString()}});
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.integrity_failed = true;
    } else if (s.code() == StatusCode::kCancelled) {
      WS_LOG_INFO(kComponent, "background integrity check stopped by shutdown", {{"path", options_.path}});
    } else {
      WS_LOG_WARN(kComponent, "background integrity check could not run",
                  {{"path", options_.path}, {"error", s.ToString()}});
    }
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.integrity_check_running = false;
  }

  // The check thread's result, for the committer (which wakes for it).
  void NoteCheckDone(const Status& s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      check_done_ = true;
      check_result_ = s;
    }
    cv_.notify_all();
  }

  // ---- committer thread ----

  // While gated: `op` waits for the check (its place in queue_ is gone;
  // under mu_ for anything but an append).
  void HoldForCheck(Op op) {
    if (!std::holds_alternative<AppendOp>(op) && !std::holds_alternative<AckOp>(op)) --others_queued_;
    held_ops_.push_back(std::move(op));
  }

  // The Append call being stored waits for the check (see FinishBatch).
  Result<std::vector<AppendOutcome>> HoldBack(OpenBatch* b) {
    b->held_back.push_back(b->results.size());
    return Status(StatusCode::kUnavailable, "waits for the integrity check");
  }

  // The check has ended. Damage: the file moves aside and a fresh store
  // takes over. Then the ceiling over every sequence handed out is
  // written (until now the intake log covered them), the gate opens, and
  // the calls that waited run first, in their order. A step that fails is
  // tried again at the next once-a-second tick; held appends go on
  // meanwhile.
  void TryOpenGate() {
    Status check;
    {
      std::lock_guard<std::mutex> lock(mu_);
      check = check_result_;
    }
    if (check.code() == StatusCode::kCancelled) {
      // Stopped by shutdown: the file stays unchecked, so the gate stays
      // shut (nothing settles into it; the next start checks it again).
      gate_retry_ = true;
      return;
    }
    if (check.code() == StatusCode::kDataLoss && !replaced_) {
      if (Status s = ReplaceDamagedStore(); !s.ok()) {
        WS_LOG_ERROR(kComponent,
                     "ALARM: could not move the damaged store aside; new events wait in the intake log, "
                     "tried again in a second",
                     {{"path", options_.path}, {"error", s.ToString()}});
        gate_retry_ = true;
        return;
      }
      replaced_ = true;
    }
    const int64_t ceiling = std::max(sequence_ceiling_, last_sequence_ + kSequenceReserve);
    if (Status s = Transact([&] { return db_->SetLastSequence(ceiling); }); !s.ok()) {
      WS_LOG_WARN(kComponent, "could not write the sequence ceiling after the check; tried again in a second",
                  {{"error", s.ToString()}});
      gate_retry_ = true;
      return;
    }
    sequence_ceiling_ = ceiling;
    gated_ = false;
    size_t waited = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      waited = held_ops_.size();
      for (auto it = held_ops_.rbegin(); it != held_ops_.rend(); ++it) {
        if (!std::holds_alternative<AppendOp>(*it) && !std::holds_alternative<AckOp>(*it)) ++others_queued_;
        queue_.push_front(std::move(*it));
      }
      held_ops_.clear();
    }
    WS_LOG_INFO(kComponent, "the store takes every call again after its background check",
                {{"held_events", std::to_string(held_.size())}, {"calls_that_waited", std::to_string(waited)}});
  }

  // Gated, the check found damage: closes the database without
  // checkpointing (its file and WAL stay as found), moves it aside as Open
  // does and opens a fresh one, which the held events settle into later.
  // After a failure it picks up where it stopped.
  Status ReplaceDamagedStore() {
    if (db_ != nullptr) {
      StopCheckpoints();
      if (Status s = db_->KeepFilesAtClose(); !s.ok()) {
        WS_LOG_WARN(kComponent, "the damaged store's WAL may be checkpointed into it as it closes",
                    {{"error", s.ToString()}});
      }
      db_.reset();
    }
    if (PathExists(options_.path)) {
      WS_ASSIGN_OR_RETURN(std::string moved_to, Quarantine(options_.path, *clock_));
      WS_LOG_ERROR(kComponent, "damaged outbox quarantined while running",
                   {{"path", options_.path}, {"moved_to", moved_to}});
    }
    sqlite::OpenReport report;
    sqlite::OutboxDbOptions o{options_.path, options_.vfs, options_.cache_kib, /*full_check=*/true,
                              options_.wal_checkpoint_bytes};
    Result<std::unique_ptr<sqlite::OutboxDb>> db = sqlite::OutboxDb::Open(o, &report);
    if (!db.ok()) return db.status().WithContext("open a fresh store");
    db_ = std::move(db).value();
    RemoveMarker(options_.path + kNeedsCheckSuffix);
    // Nothing the old file held is known any more: no leases, retries,
    // dead letters, delivered events or unfinished clock shift.
    sequence_ceiling_ = report.last_sequence;
    cursor_ = {};
    for (auto& w : waiting_) w.clear();
    delivered_empty_ = true;
    shift_.reset();
    unsynced_acks_ = false;
    ApplyTotals(report.totals);
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.quarantined_while_running = true;
      stats_.integrity_failed = false;
      stats_.clock_shift_pending = false;
    }
    StartCheckpoints();
    return Status::Ok();
  }

  // Stops the checkpoint thread and closes its connection (before the
  // committer's database is replaced).
  void StopCheckpoints() {
    if (db_ != nullptr) db_->SetWalHook(nullptr);
    {
      std::lock_guard<std::mutex> lock(ckpt_mu_);
      ckpt_stop_ = true;
    }
    ckpt_cv_.notify_all();
    if (ckpt_thread_.joinable()) ckpt_thread_.join();
    checkpointer_.reset();
    std::lock_guard<std::mutex> lock(ckpt_mu_);
    ckpt_stop_ = false;
    ckpt_wanted_ = false;
    ckpt_running_ = false;
    ckpt_failing_ = false;
    ckpt_copied_ = 0;
  }

  // At shutdown: the calls still waiting for the check are answered.
  void CancelHeldOps() {
    std::deque<Op> ops = std::move(held_ops_);
    held_ops_.clear();
    for (Op& op : ops) {
      std::visit(
          [](auto& o) {
            if constexpr (requires { o.done; }) {
              if (o.done) o.done(ShuttingDown());
            }
          },
          op);
    }
  }

  void Run() {
    // Maintenance keeps its cadence under load too: an offline gateway that
    // only appends (nobody leases) must still drop expired events.
    auto next_maintenance = std::chrono::steady_clock::now() + kMaintenanceInterval;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (gated_ && check_done_ && !gate_retry_) {
        lock.unlock();
        TryOpenGate();
        lock.lock();
      }
      if (std::chrono::steady_clock::now() >= next_maintenance) {
        lock.unlock();
        // While gated nothing but held appends may touch the file; a gate
        // that could not open is tried again instead.
        if (!gated_) RunMaintenance();
        gate_retry_ = false;
        lock.lock();
        next_maintenance = std::chrono::steady_clock::now() + kMaintenanceInterval;
      }
      if (queue_.empty()) {
        if (stopping_) {
          lock.unlock();
          CancelHeldOps();
          return;
        }
        committer_waiting_ = true;
        wake_at_queued_ = 1;
        cv_.wait_until(lock, next_maintenance, [this] {
          return stopping_ || !queue_.empty() || (gated_ && check_done_ && !gate_retry_);
        });
        committer_waiting_ = false;
        continue;
      }
      if (gated_ && !std::holds_alternative<AppendOp>(queue_.front())) {
        HoldForCheck(std::move(queue_.front()));
        queue_.pop_front();
        continue;
      }
      if (std::holds_alternative<AppendOp>(queue_.front()) || std::holds_alternative<AckOp>(queue_.front())) {
        std::vector<AckOp> acks;
        if (std::holds_alternative<AckOp>(queue_.front())) WaitForAppendAfterAcks(lock, &acks);
        if (!queue_.empty() && std::holds_alternative<AppendOp>(queue_.front())) {
          RunAppendBatch(lock, std::move(acks));
        } else {
          lock.unlock();
          RunAcks(acks);
          lock.lock();
        }
      } else {
        Op op = std::move(queue_.front());
        queue_.pop_front();
        --others_queued_;
        lock.unlock();
        RunOne(op);
        lock.lock();
      }
    }
  }

  void RunOne(Op& op) {
    if (auto* lease = std::get_if<LeaseOp>(&op)) {
      RunLease(*lease);
    } else if (auto* dead = std::get_if<DeadLetterOp>(&op)) {
      RunDeadLetter(*dead);
    } else if (auto* nack = std::get_if<NackOp>(&op)) {
      RunNack(*nack);
    } else if (auto* list = std::get_if<ListDeadLettersOp>(&op)) {
      RunListDeadLetters(*list);
    } else if (auto* retry = std::get_if<RetryDeadLetterOp>(&op)) {
      RunRetryDeadLetter(*retry);
    } else if (auto* purge = std::get_if<PurgeDeadLettersOp>(&op)) {
      RunPurgeDeadLetters(*purge);
    } else if (auto* replay = std::get_if<ReplayOp>(&op)) {
      RunReplay(*replay);
    } else {
      RunResetLeases();
    }
  }

  // Moves the appends at the head of the queue into `batch`, up to
  // max_batch_events (a single larger call goes alone), and the acks among
  // them into `acks`. Neither jumps ahead of another kind of operation, so
  // call order holds for those; an ack may run before appends called
  // earlier, which changes no outcome (an append never touches an event
  // that is in flight, and the room an ack frees only spares a drop).
  void TakeAppends(std::vector<AppendOp>* batch, size_t* events,  // events: so far in the batch
                   std::vector<AckOp>* acks) {
    while (!queue_.empty()) {
      if (auto* ack = std::get_if<AckOp>(&queue_.front())) {
        if (gated_) {
          HoldForCheck(std::move(queue_.front()));
        } else {
          acks->push_back(std::move(*ack));
        }
        queue_.pop_front();
        continue;
      }
      auto* op = std::get_if<AppendOp>(&queue_.front());
      if (op == nullptr) return;
      if (*events > 0 && *events + op->entries.size() > options_.max_batch_events) return;
      *events += op->entries.size();
      batch->push_back(std::move(*op));
      queue_.pop_front();
    }
  }

  // Takes the acks at the head of the queue. While producers are appending,
  // waits up to commit_window_us for an append to share their transaction:
  // a delivered event then costs its store one commit instead of two (the
  // pages an ack changes are mostly those the next append changes anyway:
  // with 64 producers 1,005 bytes written per delivered event instead of
  // 1,455). Any other operation ends the wait.
  //
  // Producers count as appending while an append batch ran within the last
  // kAppendsExpectedWindows commit windows. A link that drains a backlog
  // after the producers went quiet does not wait: no append would come, and
  // every wait would hold the acknowledged events in the link's window: in
  // six alternating drains of 200,000 events that began 0.4 s after the last
  // append, 53,500 events/s on average while acks waited, 57,400 without.
  void WaitForAppendAfterAcks(std::unique_lock<std::mutex>& lock, std::vector<AckOp>* acks) {
    const auto now = std::chrono::steady_clock::now();
    const auto window = std::chrono::microseconds(options_.commit_window_us);
    const bool producers_active = now - last_append_batch_ < kAppendsExpectedWindows * window;
    const auto deadline = now + window;
    for (;;) {
      while (!queue_.empty() && std::holds_alternative<AckOp>(queue_.front())) {
        acks->push_back(std::move(std::get<AckOp>(queue_.front())));
        queue_.pop_front();
      }
      if (RunLeasesAhead(lock)) continue;
      if (!queue_.empty() || stopping_ || !producers_active || options_.commit_window_us <= 0) return;
      committer_waiting_ = true;
      wake_at_queued_ = 1;
      const bool woken = cv_.wait_until(lock, deadline, [this] { return stopping_ || !queue_.empty(); });
      committer_waiting_ = false;
      if (!woken) return;
    }
  }

  // Runs the leases at the head of the queue while a batch is being
  // gathered, before its transaction begins. A lease may pass appends and
  // acks that are not committed yet: none of them is acknowledged, so no
  // caller can expect to see them, and an event in flight is never leased
  // twice either way. Without this, the link's leases (several per commit
  // while it forwards) would each close the batch early: with the link up
  // and 64 producers, commits held 34 events instead of up to 64.
  //
  // Inside an open batch transaction a lease reads only committed events
  // (see RunLease). A batch that dropped events to make room ends before
  // the next lease: the drop is not committed yet, and a lease that passed
  // the dropped rows would never come back for them if the batch failed.
  bool RunLeasesAhead(std::unique_lock<std::mutex>& lock) {
    if (open_batch_ != nullptr && open_batch_->tally.dropped > 0) return false;
    bool ran = false;
    while (!queue_.empty() && std::holds_alternative<LeaseOp>(queue_.front())) {
      if (gated_) {
        HoldForCheck(std::move(queue_.front()));
        queue_.pop_front();
        ran = true;
        continue;
      }
      LeaseOp lease = std::move(std::get<LeaseOp>(queue_.front()));
      queue_.pop_front();
      --others_queued_;
      lock.unlock();
      RunLease(lease);
      lock.lock();
      ran = true;
    }
    return ran;
  }

  // Takes the appends at the head of the queue; if that empties the queue
  // and the batch has fewer calls than recent batches had, waits up to
  // commit_window_us for more producers. Producers that wait for their
  // acknowledgement come back together after each commit, so a batch as
  // large as the recent ones most likely holds all of them, and a lone
  // producer has no one to wait for: waiting longer would only add latency.
  // Producers that come and go at random (a trickle) make the recent
  // maximum larger than most batches, so they still share fsyncs. The window is measured on the real steady
  // clock: it trades latency for fewer fsyncs and is no policy a test needs
  // to move by hand.
  //
  // The batch's transaction is already open: what is taken is stored at
  // once (TakeAndStore), while the other producers are still on their way.
  void GatherAppends(std::unique_lock<std::mutex>& lock, OpenBatch* b) {
    if (options_.commit_window_us > 0) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.commit_window_us);
      const size_t crowd = last_batch_requests_;
      while (Gathering(*b) && b->ops.size() < last_batch_requests_) {
        if (!queue_.empty()) {
          // Came in while the last ones were stored. Anything but an append,
          // ack or lease ends the batch.
          if (!TakeAndStore(lock, b)) break;
          continue;
        }
        const size_t missing = last_batch_requests_ - b->ops.size();
        // Woken by a part of the missing appends (to store them while the
        // rest are on their way) or by another operation than an append or
        // ack (a lease runs at once; anything else ends the batch: appends
        // never overtake it). Counted, not looked for at the back of the
        // queue: an append queued right behind a lease would hide it, and
        // the lease would wait for the window to end (2.3 ms for one lease
        // in thirty at 1,000 events/s).
        const size_t wake_at = std::min(missing, kStoreWhileGathering);
        committer_waiting_ = true;
        wake_at_queued_ = wake_at;
        const bool woken = cv_.wait_until(lock, deadline, [this, wake_at] {
          return stopping_ || queue_.size() >= wake_at || others_queued_ > 0;
        });
        committer_waiting_ = false;
        if (!woken) break;
      }
      if (b->ops.size() >= crowd) Linger(lock, deadline, b);
    }
    // A maximum that decays by 1/8 per batch: follows a growing crowd at
    // once and a shrinking one within a few commits.
    last_batch_requests_ = std::max<size_t>({b->ops.size(), last_batch_requests_ - last_batch_requests_ / 8 - 1, 1});
  }

  // Whether the open batch may still take more.
  bool Gathering(const OpenBatch& b) const {
    return !stopping_ && b.storage.ok() && b.events < options_.max_batch_events;
  }

  // Takes what the queue holds for the open batch, runs the leases that
  // come first, and stores the new calls and acks (without the lock).
  // False when it could do none of that: another operation is first.
  bool TakeAndStore(std::unique_lock<std::mutex>& lock, OpenBatch* b) {
    TakeAppends(&b->ops, &b->events, &b->acks);
    bool leased = false;
    while (RunLeasesAhead(lock)) {
      leased = true;
      TakeAppends(&b->ops, &b->events, &b->acks);
    }
    if (b->stored == b->ops.size() && b->acks_applied == b->acks.size()) return leased;
    lock.unlock();
    StoreTaken(b);
    lock.lock();
    return true;
  }

  // A batch as large as the recent ones may still gain from waiting: events
  // that arrive independently of their answers (sensors, a paced trickle)
  // would otherwise each pay a commit of their own, and a commit writes
  // whole pages whether it holds one event or ten. With the link up and
  // 1,000 events/s from 16 producers, a 5 ms window took the node from
  // 3,688 bytes written and 200 ms of CPU per 1,000 events (nearly every
  // event its own commit) to 2,229 bytes and 104 ms. Producers that each
  // wait for their answer (one alone, or a crowd that is all in this
  // batch) send nothing while it waits: such a wait only delays them. So
  // the batch waits until the window ends only while such waits gain
  // events; after one that gained none, the next 16, 64, 256 and then
  // 1,024 batches do not wait (for a lone producer one wasted window per
  // 1,025 events, 1-2 % of its rate), and the first wait that gains resets
  // that. The first 16 batches of a new store skip it too.
  void Linger(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point deadline, OpenBatch* b) {
    // A full batch, a doomed transaction or more already queued (they make
    // the next batch): nothing to wait for.
    if (!Gathering(*b) || !queue_.empty()) return;
    if (linger_skip_ > 0) {
      --linger_skip_;
      return;
    }
    const size_t before = b->ops.size();
    while (Gathering(*b)) {
      if (!queue_.empty()) {
        if (!TakeAndStore(lock, b)) break;
        continue;
      }
      committer_waiting_ = true;
      wake_at_queued_ = 1;
      const bool woken = cv_.wait_until(lock, deadline, [this] { return stopping_ || !queue_.empty(); });
      committer_waiting_ = false;
      if (!woken) break;
    }
    if (b->ops.size() > before) {
      linger_backoff_ = 0;
    } else {
      linger_backoff_ = std::min<size_t>(std::max<size_t>(linger_backoff_ * 4, kMinLingerBackoff), kMaxLingerBackoff);
      linger_skip_ = linger_backoff_;
    }
  }

  // Inside the transaction that hands out sequences up to
  // t->last_sequence: keeps the meta row's ceiling above them.
  Status CoverSequences(BatchTally* t) {
    if (t->last_sequence <= t->sequence_ceiling) return Status::Ok();
    WS_TRY(db_->SetLastSequence(t->last_sequence + kSequenceReserve));
    t->sequence_ceiling = t->last_sequence + kSequenceReserve;
    return Status::Ok();
  }

  BatchTally StartTally() const {
    BatchTally t;
    t.last_sequence = last_sequence_;
    t.sequence_ceiling = sequence_ceiling_;
    t.usage = usage_;
    return t;
  }

  // After a commit: the tally becomes the store's state. Drops change each
  // class's oldest event, so they are read back from the file.
  void CommitTally(const BatchTally& t, int64_t now) {
    last_sequence_ = t.last_sequence;
    sequence_ceiling_ = t.sequence_ceiling;
    usage_ = t.usage;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      for (size_t p = 0; p < kPriorityCount; ++p) {
        ClassBacklog& b = stats_.backlog[p];
        if (t.added[p] > 0 && b.count == 0) b.oldest_accepted_us = now;
        b.count = usage_.classes[p].count;
        b.bytes = usage_.classes[p].bytes;
      }
      stats_.last_sequence = last_sequence_;
      stats_.removed_dropped_overflow += t.dropped;
    }
    if (t.dropped > 0) RefreshTotals();
  }

  // Gathers and stores one append batch in one transaction, with the acks
  // taken before and with it. Acks are removed before the calls taken after
  // them, so that the limits see the room they free. Called, and returns,
  // with `lock` held.
  void RunAppendBatch(std::unique_lock<std::mutex>& lock, std::vector<AckOp> acks) {
    OpenBatch b;
    b.acks = std::move(acks);
    TakeAppends(&b.ops, &b.events, &b.acks);
    // Before the transaction: these leases may still sweep and dead-letter.
    while (RunLeasesAhead(lock)) TakeAppends(&b.ops, &b.events, &b.acks);
    lock.unlock();
    BeginBatch(&b);
    lock.lock();
    GatherAppends(lock, &b);
    lock.unlock();
    FinishBatch(b);
    lock.lock();
  }

  void BeginBatch(OpenBatch* b) {
    b->now = Now();
    last_append_batch_ = std::chrono::steady_clock::now();
    b->tally = StartTally();
    b->storage = durable_commits_broken_ ? RestoreDurableCommits() : Status::Ok();
    // Gated without a database (a damaged one moved aside, the fresh one
    // not open yet): the batch only writes the intake log.
    if (b->storage.ok() && db_ != nullptr) b->storage = db_->Begin();
    if (!b->storage.ok()) return;
    b->begun = true;
    open_batch_ = b;
    StoreTaken(b);
  }

  // Inside the batch's transaction: removes what the acks taken since the
  // last call acknowledged, then stores the calls taken since.
  void StoreTaken(OpenBatch* b) {
    if (!b->begun || !b->storage.ok()) return;
    if (b->acks_applied < b->acks.size()) {
      // At once, so the limits see the room they free; put back if the
      // transaction fails.
      TakeHeldAcks(std::span<AckOp>(b->acks).subspan(b->acks_applied), &b->tally.usage, b->acks_applied,
                   &b->held_taken);
      int64_t removed = 0;
      b->storage = RemoveAcked(std::span<const AckOp>(b->acks).subspan(b->acks_applied), b->now, &removed);
      b->acks_applied = b->acks.size();
      if (b->storage.ok() && removed > 0) {
        b->acked_removed += removed;
        // With what the transaction stored so far (ReadTotals counts it).
        Result<sqlite::StoreTotals> t = db_->ReadTotals();
        if (t.ok()) {
          b->after_acks = *t;
          b->tally.usage = WithIntake(UsageOf(*t), b);
        } else {
          b->storage = t.status();
        }
      }
      if (!b->storage.ok()) return;
    }
    while (b->stored < b->ops.size()) {
      b->results.push_back(RunAppendRequest(b->ops[b->stored], b));
      ++b->stored;
      if (!b->storage.ok()) {
        b->failed_at = b->results.size() - 1;
        return;
      }
    }
  }

  // Commits the batch (or rolls it back), then answers every call and ack.
  void FinishBatch(OpenBatch& b) {
    StoreTaken(&b);  // nothing is left untaken; a no-op unless a path forgot it
    Status storage = b.storage;
    // While gated the intake log covers its sequences (TryOpenGate writes
    // the ceiling before anything else can be stored).
    if (storage.ok() && !gated_) storage = CoverSequences(&b.tally);
    // Gated, the transaction only read (and a read that met damage would
    // fail its commit): it ends without one.
    if (storage.ok() && db_ != nullptr && !gated_) storage = db_->Commit();
    open_batch_ = nullptr;
    if ((!storage.ok() || gated_) && db_ != nullptr) db_->Rollback();
    settle_pending_ = false;
    if (storage.ok() && b.settled) AfterSettle();
    if (storage.ok()) {
      MaybeRestartIntake();
    } else {
      RestoreHeld(b);
    }
    // The events that went to the intake are durable once their chunk is.
    // Acks committed without a sync before them must be durable by the
    // time these appends answer, as when a commit into the database syncs
    // the WAL: when the transaction wrote nothing, the WAL is synced here.
    Status appends = storage;
    if (storage.ok()) {
      if (intake_ == nullptr || b.direct || b.settled || b.acked_removed > 0) {
        unsynced_acks_ = false;  // this commit's fsync covered the WAL before it
      } else if (unsynced_acks_ && db_ != nullptr) {
        appends = db_->SyncWal().WithContext("sync the acks before it");
        if (appends.ok()) unsynced_acks_ = false;
      }
    }
    if (appends.ok() && !b.intake.empty()) appends = WriteIntake(b);
    std::vector<Result<std::vector<AppendOutcome>>>& results = b.results;
    std::vector<AppendOp>& batch = b.ops;
    // Calls held back for the check are not answered now: they run again
    // once it ended, whatever became of this batch.
    std::vector<bool> answer(batch.size(), true);
    for (size_t i : b.held_back) {
      answer[i] = false;
      HoldForCheck(Op(std::move(batch[i])));
    }

    if (!appends.ok()) {
      appends = appends.WithContext("append");
      WS_LOG_WARN(kComponent, "append transaction failed; nothing of it was stored",
                  {{"requests", std::to_string(batch.size())}, {"error", appends.ToString()}});
      std::vector<Result<std::vector<AppendOutcome>>> failed;
      failed.reserve(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        // A request that was refused on its own keeps its precise reason.
        const bool own_rejection = i < results.size() && i != b.failed_at && !results[i].ok();
        failed.push_back(own_rejection ? std::move(results[i]) : Result<std::vector<AppendOutcome>>(appends));
      }
      results = std::move(failed);
      if (storage.ok()) {
        // The transaction (acks, the sequence ceiling) committed; the WAL's
        // sync or the intake chunk failed. The next chunk goes to the same
        // place in the log, so its sequences can be handed out again.
        sequence_ceiling_ = b.tally.sequence_ceiling;
        b.intake.clear();
        RefreshTotals();
      }
    } else {
      if (b.after_acks.has_value()) ApplyTotals(*b.after_acks);
      CommitTally(b.tally, b.now);
      const auto committed = std::chrono::steady_clock::now();
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (b.tally.new_events > 0) {
        ++stats_.commits;
        stats_.appended_events += b.tally.new_events;
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!answer[i] || !results[i].ok()) continue;
        const int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(committed - batch[i].called).count();
        RecordAckLatency(us, batch[i].entries.size(), &stats_);
      }
    }

    if (!b.acks.empty()) {
      if (storage.ok()) {
        FinishAcks(b.acks, b.acked_removed, Status::Ok());
      } else {
        // On their own the acks may still commit (a disk too full for new
        // events usually has room for deletes), and they are what frees it.
        RunAcks(b.acks);
      }
    }
    // Records that leases inside the transaction found unreadable.
    std::vector<DeadLetterOp> unreadable = std::move(deferred_dead_letters_);
    deferred_dead_letters_.clear();
    for (DeadLetterOp& dead : unreadable) RunDeadLetter(dead);
    for (size_t i = 0; i < batch.size(); ++i) {
      if (answer[i] && batch[i].done) batch[i].done(std::move(results[i]));
    }
    if (appends.ok() && b.tally.new_events > 0) NotifyListener();
  }

  // One Append call inside the batch transaction, under its own savepoint.
  // Sets *storage when the transaction as a whole can no longer commit.
  // A call of one event writes nothing before it is sure to be admitted
  // unless drop_oldest makes room, so its savepoint is taken only then.
  Result<std::vector<AppendOutcome>> RunAppendRequest(AppendOp& op, OpenBatch* b) {
    if (op.entries.empty()) return std::vector<AppendOutcome>{};
    if (gated_) {
      // Only the intake log, or wait for the check. A lookup that meets a
      // damaged page waits too: the check is about to find that damage.
      if (!IntakeCanTake(op.entries, *b, /*any_backlog=*/true)) return HoldBack(b);
      Result<std::vector<AppendOutcome>> r = AppendToIntake(op.entries, b);
      if (!r.ok() && !b->storage.ok() && b->storage.code() == StatusCode::kDataLoss) {
        b->storage = Status::Ok();
        return HoldBack(b);
      }
      return r;
    }
    if (intake_ != nullptr && !b->direct) {
      if (IntakeCanTake(op.entries, *b)) return AppendToIntake(op.entries, b);
      // This call's events go into the database. What the intake holds
      // goes there first, in this transaction: the database then holds
      // every event below the intake's sequences, as leasing assumes.
      if (Status s = SettleInto(b); !s.ok()) {
        b->storage = s;
        return s;
      }
      b->direct = true;
    }
    const int64_t now = b->now;
    BatchTally* tally = &b->tally;
    Status* storage = &b->storage;
    savepoint_taken_ = false;
    if (op.entries.size() > 1) {
      if (Status s = db_->Savepoint(); !s.ok()) {
        *storage = s;
        return s;
      }
      savepoint_taken_ = true;
    }
    BatchTally mine = *tally;
    std::vector<AppendOutcome> outcomes;
    outcomes.reserve(op.entries.size());
    bool rejected = false;
    Status s = AppendEntries(op.entries, now, &mine, &outcomes, &rejected);
    if (s.ok()) {
      if (Status r = savepoint_taken_ ? db_->ReleaseSavepoint() : Status::Ok(); !r.ok()) {
        *storage = r;
        return r;
      }
      *tally = mine;
      return outcomes;
    }
    if (!rejected) {
      *storage = s;
      return s;
    }
    if (!savepoint_taken_) return s;  // refused before it wrote anything
    Status undo = db_->RollbackToSavepoint();
    if (undo.ok()) undo = db_->ReleaseSavepoint();
    if (!undo.ok()) *storage = undo;
    return s;
  }

  // Makes room for one event of class `p` counting `bytes`, as the class's
  // overflow policy says, inside the open transaction. Sets *refused (and
  // returns kResourceExhausted with the reason) when the event may not be
  // stored; any other error is a storage failure.
  Status Admit(Priority p, uint64_t bytes, BatchTally* tally, bool* refused) {
    const auto i = static_cast<size_t>(p);
    for (;;) {
      AdmissionDecision d = DecideAdmission(limits_, tally->usage, p, bytes);
      if (d.action == Admission::kAdmit) return Status::Ok();
      if (d.action == Admission::kReject) {
        *refused = true;
        return ResourceExhausted(std::move(d.reason));
      }
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::EventHead> head, db_->OldestInClass(p));
      // The totals say the class has events; if the table disagrees, refuse
      // rather than loop.
      if (!head.has_value()) {
        *refused = true;
        return ResourceExhausted(std::move(d.reason));
      }
      if (!savepoint_taken_) {
        // The first write of a one-event call: from here on a refusal must
        // be undone.
        WS_TRY(db_->Savepoint());
        savepoint_taken_ = true;
      }
      WS_TRY(db_->DeleteEvent(head->sequence).status());
      ClassUsage& u = tally->usage.classes[i];
      u.count -= std::min<uint64_t>(u.count, 1);
      u.bytes -= std::min(u.bytes, head->bytes);
      ++tally->dropped;
    }
  }

  // Sets *rejected for a refusal of this call alone (nothing else is wrong).
  Status AppendEntries(const std::vector<OutboxEntry>& entries, int64_t now, BatchTally* tally,
                       std::vector<AppendOutcome>* outcomes, bool* rejected) {
    for (const OutboxEntry& e : entries) {
      const auto p = static_cast<size_t>(e.priority);
      if (e.event.id.empty() || p >= kPriorityCount) {
        *rejected = true;
        return InvalidArgument(e.event.id.empty() ? "event id must not be empty"
                                                  : "event \"" + e.event.id + "\" has an unknown priority class");
      }
      std::string encoded;
      if (e.record.empty()) encoded = EncodeEventRecord(e.event);
      const std::string& record = e.record.empty() ? encoded : e.record;
      const uint64_t bytes = StoredBytes(e, record);
      const int64_t seq = tally->last_sequence + 1;
      const int64_t expires_us = e.ttl_us > 0 ? now + e.ttl_us : 0;
      const sqlite::NewEventRow row{seq, e.event.id, e.priority, e.stream, e.topic, now, expires_us, bytes, record, 0};
      // Ids live in three tables; while the dead letters and the delivered
      // events are empty, only the outbox's unique index can hold one. Then,
      // when the event fits without making room, it is inserted at once and
      // the index answers whether the id is new: a new id (nearly every
      // event) costs no lookup of its own.
      const bool only_outbox = dlq_count_ == 0 && delivered_empty_;
      if (only_outbox && DecideAdmission(limits_, tally->usage, e.priority, bytes).action == Admission::kAdmit) {
        WS_ASSIGN_OR_RETURN(bool inserted, db_->InsertEventIfNew(row));
        if (inserted) {
          CountStored(e, bytes, tally, outcomes);
          continue;
        }
      }
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::StoredId> found,
                          only_outbox ? db_->FindIdInOutbox(e.event.id) : db_->FindId(e.event.id));
      if (found.has_value()) {
        if (SameEventRecord(found->record, e.event.id, record)) {
          outcomes->push_back(AppendOutcome{found->sequence, e.event.id, true});
          continue;
        }
        *rejected = true;
        return AlreadyExists("event id \"" + e.event.id + "\" is already stored (sequence " +
                             std::to_string(found->sequence) + ") with different content");
      }
      if (Status admit = Admit(e.priority, bytes, tally, rejected); !admit.ok()) {
        if (!*rejected) return admit;
        {
          std::lock_guard<std::mutex> lock(stats_mu_);
          stats_.rejected_full += entries.size();
        }
        return ResourceExhausted("event \"" + e.event.id + "\" refused: " + admit.message());
      }
      WS_TRY(db_->InsertEvent(row));
      CountStored(e, bytes, tally, outcomes);
    }
    return Status::Ok();
  }

  // An event of `e`'s class was just stored under the next sequence.
  static void CountStored(const OutboxEntry& e, uint64_t bytes, BatchTally* tally,
                          std::vector<AppendOutcome>* outcomes) {
    const auto p = static_cast<size_t>(e.priority);
    tally->last_sequence += 1;
    tally->new_events += 1;
    tally->added[p] += 1;
    tally->usage.classes[p].count += 1;
    tally->usage.classes[p].bytes += bytes;
    outcomes->push_back(AppendOutcome{tally->last_sequence, e.event.id, false});
  }

  // ---- the intake (intake_log.h) ----
  //
  // An append batch writes its new events as one chunk of the intake log
  // and syncs it; they are acknowledged then and held in memory (held_)
  // until the link's ack removes them, and never reach the database. What
  // stays longer (kIntakeHoldUs: the link is down or slow), grows beyond
  // kIntakeMaxHeldBytes, or must be handled by the database (a TTL, a
  // drop to make room, a nack, a dead letter, a retry, a replay, a clock
  // step, shutdown) is settled: inserted into the database in one
  // transaction, after which the log starts over. So every sequence in
  // the database is below every held one, and a class's events lease from
  // the database first, then from held_.

  // Whether an Append call's events can go to the intake: the database
  // holds few undelivered events (else the link is down or far behind, new
  // events wait behind those, and the intake would only write them twice;
  // a few, because the link acks a batch while the next one commits); no TTL
  // (expiry is the database's sweep); each is admitted without making room.
  // `any_backlog`: whatever the database holds (while gated).
  bool IntakeCanTake(const std::vector<OutboxEntry>& entries, const OpenBatch& b, bool any_backlog = false) const {
    if (HeldBytes() > kIntakeMaxHeldBytes || intake_->used_bytes() > kIntakeMaxLogBytes) return false;
    const BatchTally& t = b.tally;
    uint64_t counted = 0, held = b.intake.size();
    for (size_t p = 0; p < kPriorityCount; ++p) {
      counted += t.usage.classes[p].count;
      held += held_usage_[p].count;
    }
    if (!any_backlog && counted > held && counted - held > kIntakeMaxDatabaseBacklog) return false;
    StoreUsage u = t.usage;
    for (const OutboxEntry& e : entries) {
      const auto p = static_cast<size_t>(e.priority);
      if (e.event.id.empty() || p >= kPriorityCount) continue;  // refused as in the database
      if (e.ttl_us > 0) return false;
      const uint64_t bytes = e.record.empty() ? StoredBytes(e, EncodeEventRecord(e.event)) : StoredBytes(e, e.record);
      if (DecideAdmission(limits_, u, e.priority, bytes).action != Admission::kAdmit) return false;
      u.classes[p].count += 1;
      u.classes[p].bytes += bytes;
    }
    return true;
  }

  // One Append call into the batch's intake events: all of them, or (a
  // refusal of this call alone, or a storage failure) none.
  Result<std::vector<AppendOutcome>> AppendToIntake(std::vector<OutboxEntry>& entries, OpenBatch* b) {
    const size_t mark = b->intake.size();
    auto undo = [&] {
      for (size_t i = mark; i < b->intake.size(); ++i) b->intake_ids.erase(b->intake[i].id);
      b->intake.resize(mark);
    };
    const bool only_outbox = dlq_count_ == 0 && delivered_empty_;
    BatchTally mine = b->tally;
    std::vector<AppendOutcome> outcomes;
    outcomes.reserve(entries.size());
    for (OutboxEntry& e : entries) {
      const auto p = static_cast<size_t>(e.priority);
      if (e.event.id.empty() || p >= kPriorityCount) {
        undo();
        return InvalidArgument(e.event.id.empty() ? "event id must not be empty"
                                                  : "event \"" + e.event.id + "\" has an unknown priority class");
      }
      std::string record = e.record.empty() ? EncodeEventRecord(e.event) : std::move(e.record);
      const uint64_t bytes = StoredBytes(e, record);
      // Already stored: in this batch, held, or in the database.
      std::optional<int64_t> found_seq;
      std::string_view found_record;
      std::optional<sqlite::StoredId> stored;
      if (auto it = b->intake_ids.find(e.event.id); it != b->intake_ids.end()) {
        found_seq = b->intake[it->second].sequence;
        found_record = b->intake[it->second].record;
      } else if (auto h = held_ids_.find(e.event.id); h != held_ids_.end() && held_.count(h->second) != 0) {
        const sqlite::IntakeEvent& held = held_.find(h->second)->second;
        found_seq = held.sequence;
        found_record = held.record;
      } else {
        // With the link up the database's outbox is usually empty: then an
        // id that is in neither map is new, without a lookup per event.
        // Gated without a database: the fresh one will be empty.
        if (db_ == nullptr) b->outbox_table_empty = true;
        if (only_outbox && !b->outbox_table_empty.has_value()) {
          Result<bool> empty = db_->EventsEmpty();
          if (!empty.ok()) {
            undo();
            b->storage = empty.status();
            return empty.status();
          }
          b->outbox_table_empty = *empty;
        }
        Result<std::optional<sqlite::StoredId>> r = std::optional<sqlite::StoredId>();
        if (db_ == nullptr) {
          // nothing to look up
        } else if (!only_outbox) {
          r = db_->FindId(e.event.id);
        } else if (!*b->outbox_table_empty) {
          r = db_->FindIdInOutbox(e.event.id);
        }
        if (!r.ok()) {
          undo();
          b->storage = r.status();
          return r.status();
        }
        stored = std::move(r).value();
        if (stored.has_value()) {
          found_seq = stored->sequence;
          found_record = stored->record;
        }
      }
      if (found_seq.has_value()) {
        if (SameEventRecord(found_record, e.event.id, record)) {
          outcomes.push_back(AppendOutcome{*found_seq, e.event.id, true});
          continue;
        }
        undo();
        return AlreadyExists("event id \"" + e.event.id + "\" is already stored (sequence " +
                             std::to_string(*found_seq) + ") with different content");
      }
      sqlite::IntakeEvent ev;
      ev.sequence = mine.last_sequence + 1;
      ev.priority = e.priority;
      ev.accepted_us = b->now;
      ev.bytes = bytes;
      ev.id = e.event.id;
      ev.stream = std::move(e.stream);
      ev.topic = std::move(e.topic);
      ev.record = std::move(record);
      b->intake_ids.emplace(ev.id, b->intake.size());
      b->intake.push_back(std::move(ev));
      CountStored(e, bytes, &mine, &outcomes);
    }
    b->tally = mine;
    return outcomes;
  }

  // Inside an open transaction: inserts the held events and those the
  // batch `b` (if any) took so far into the database.
  Status SettleInto(OpenBatch* b) {
    for (const auto& [seq, e] : held_) WS_TRY(db_->InsertEvent(RowOf(e)));
    // Until this transaction ends, an ack of a held event deletes its row.
    settle_pending_ = !held_.empty();
    if (b != nullptr) {
      for (const sqlite::IntakeEvent& e : b->intake) WS_TRY(db_->InsertEvent(RowOf(e)));
      b->settled = b->settled || !held_.empty();
      b->intake.clear();
      b->intake_ids.clear();
    }
    return Status::Ok();
  }

  // After the transaction that settled them committed: the held events are
  // the database's now, and the log starts over.
  void AfterSettle() {
    if (!held_.empty()) {
      WS_LOG_INFO(kComponent, "events moved from the intake log into the database",
                  {{"count", std::to_string(held_.size())}});
    }
    held_.clear();
    held_ids_.clear();
    held_usage_ = {};
    unwritten_marks_.clear();
    if (Status s = intake_->Clear(); !s.ok()) {
      // The old chunks stay: a restart would settle those events again
      // (each id once) or send delivered ones again. Never a loss.
      WS_LOG_WARN(kComponent, "could not start the intake log over", {{"error", s.ToString()}});
      intake_->Restart();
    }
  }

  // Settles every held event in a transaction of its own.
  Status Settle() {
    if (intake_ == nullptr || held_.empty()) return Status::Ok();
    Status s = Transact([&]() -> Status { return SettleInto(nullptr); });
    settle_pending_ = false;
    WS_TRY(s.WithContext("move held events into the database"));
    AfterSettle();
    RefreshTotals();
    return Status::Ok();
  }

  bool Held(int64_t sequence) const { return held_.find(sequence) != held_.end(); }

  // After the acks' transaction (if any) committed: removes the held events
  // that `acks` name from held_ and from the acks (the database never had
  // them), counting them as delivered; their ack records go out with the
  // next chunk.
  // With `taken`, the events go there (with the index in `acks`, plus
  // `first_index`), to be put back by RestoreHeld.
  void TakeHeldAcks(std::span<AckOp> acks, StoreUsage* tally_usage = nullptr, size_t first_index = 0,
                    std::vector<std::pair<size_t, sqlite::IntakeEvent>>* taken = nullptr) {
    if (held_.empty() || settle_pending_) return;
    uint64_t n = 0;
    for (size_t k = 0; k < acks.size(); ++k) {
      AckOp& a = acks[k];
      auto keep = a.sequences.begin();
      for (int64_t seq : a.sequences) {
        auto it = held_.find(seq);
        if (it == held_.end()) {
          *keep++ = seq;
          continue;
        }
        const auto p = static_cast<size_t>(it->second.priority);
        for (ClassUsage* u : {&usage_.classes[p], &held_usage_[p],
                              tally_usage != nullptr ? &tally_usage->classes[p] : nullptr}) {
          if (u == nullptr) continue;
          u->count -= std::min<uint64_t>(u->count, 1);
          u->bytes -= std::min(u->bytes, it->second.bytes);
        }
        held_ids_.erase(it->second.id);
        if (taken != nullptr) taken->emplace_back(first_index + k, std::move(it->second));
        held_.erase(it);
        unwritten_marks_.push_back(seq);
        ++n;
      }
      a.sequences.erase(keep, a.sequences.end());
    }
    if (n == 0) return;
    PublishUsage(n);
  }

  // The backlog figures after held events left (`delivered` of them by an
  // ack) or came back (RestoreHeld).
  void PublishUsage(uint64_t delivered) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.removed_delivered += delivered;
    for (size_t p = 0; p < kPriorityCount; ++p) {
      stats_.backlog[p].count = usage_.classes[p].count;
      stats_.backlog[p].bytes = usage_.classes[p].bytes;
      if (stats_.backlog[p].count == 0) stats_.backlog[p].oldest_accepted_us = 0;
    }
  }

  // A batch's transaction failed: the held events its acks took are held
  // again, their acks go back to the calls that named them (and run again
  // on their own), and their ack records are not written.
  void RestoreHeld(OpenBatch& b) {
    if (b.held_taken.empty()) return;
    std::unordered_map<int64_t, bool> back;
    for (auto& [index, e] : b.held_taken) {
      const int64_t seq = e.sequence;
      back[seq] = true;
      b.acks[index].sequences.push_back(seq);
      const auto p = static_cast<size_t>(e.priority);
      for (ClassUsage* u : {&usage_.classes[p], &held_usage_[p]}) {
        u->count += 1;
        u->bytes += e.bytes;
      }
      held_ids_.emplace(e.id, seq);
      held_.emplace(seq, std::move(e));
    }
    std::erase_if(unwritten_marks_, [&back](int64_t seq) { return back.count(seq) != 0; });
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.removed_delivered -= std::min<uint64_t>(stats_.removed_delivered, b.held_taken.size());
    }
    b.held_taken.clear();
    PublishUsage(0);
  }

  // With nothing held, a log grown past kIntakeRestartBytes starts over at
  // its beginning. Only after the acks that emptied it are final.
  // Never while gated: the log then covers sequences the meta row does not.
  void MaybeRestartIntake() {
    if (gated_ || intake_ == nullptr || !held_.empty() || intake_->used_bytes() <= kIntakeRestartBytes) return;
    intake_->Restart();
    unwritten_marks_.clear();
  }

  uint64_t HeldBytes() const {
    uint64_t n = 0;
    for (const ClassUsage& u : held_usage_) n += u.bytes;
    return n;
  }

  // The accepted time of the first held event of class `p`; 0 if none.
  int64_t OldestHeld(Priority p) const {
    if (held_usage_[static_cast<size_t>(p)].count == 0) return 0;
    for (const auto& [seq, e] : held_) {
      if (e.priority == p) return e.accepted_us;
    }
    return 0;
  }

  // The database's usage plus what the intake holds and the batch `b` took.
  StoreUsage WithIntake(StoreUsage u, const OpenBatch* b) const {
    for (size_t p = 0; p < kPriorityCount; ++p) {
      u.classes[p].count += held_usage_[p].count;
      u.classes[p].bytes += held_usage_[p].bytes;
    }
    if (b != nullptr) {
      for (const sqlite::IntakeEvent& e : b->intake) {
        u.classes[static_cast<size_t>(e.priority)].count += 1;
        u.classes[static_cast<size_t>(e.priority)].bytes += e.bytes;
      }
    }
    return u;
  }

  // After the batch's transaction committed: writes its intake events (with
  // the ack records not yet written) as one chunk and syncs it; then they
  // are held.
  Status WriteIntake(OpenBatch& b) {
    std::vector<const sqlite::IntakeEvent*> events;
    events.reserve(b.intake.size());
    for (const sqlite::IntakeEvent& e : b.intake) events.push_back(&e);
    WS_TRY(intake_->Write(events, unwritten_marks_, /*sync=*/true).WithContext("write the intake log"));
    unwritten_marks_.clear();
    for (sqlite::IntakeEvent& e : b.intake) {
      held_usage_[static_cast<size_t>(e.priority)].count += 1;
      held_usage_[static_cast<size_t>(e.priority)].bytes += e.bytes;
      held_ids_.emplace(e.id, e.sequence);
      const int64_t seq = e.sequence;
      held_.emplace_hint(held_.end(), seq, std::move(e));
    }
    b.intake.clear();
    b.intake_ids.clear();
    return Status::Ok();
  }

  // Appends to `out` held events of class `p` after `*cursor`, up to `max`
  // in all, moving the cursor.
  void LeaseHeld(Priority p, size_t max, int64_t* cursor, std::vector<LeasedEvent>* out) const {
    for (auto it = held_.upper_bound(*cursor); it != held_.end() && out->size() < max; ++it) {
      const sqlite::IntakeEvent& e = it->second;
      if (e.priority != p) continue;
      LeasedEvent l;
      l.sequence = e.sequence;
      l.topic = e.topic;
      l.stream = e.stream;
      l.priority = e.priority;
      l.attempts = e.attempts;
      l.accepted_at_us = e.accepted_us;
      l.id = e.id;
      l.record = e.record;
      out->push_back(std::move(l));
      *cursor = e.sequence;
    }
  }

  // Once a second and before a lease: what waited too long, or grew too
  // large, settles; once a second, an empty intake whose last acks are not
  // in the log yet starts its log over (so a restart sends none of them
  // again).
  // `tick`: the once-a-second maintenance (else a lease).
  void MaintainIntake(int64_t now, bool tick) {
    if (intake_ == nullptr) return;
    if (held_.empty()) {
      if (tick && intake_->used_bytes() > 0 && !unwritten_marks_.empty()) {
        AfterSettle();  // nothing to move; writes the log's new start
      }
      return;
    }
    const int64_t oldest = held_.begin()->second.accepted_us;
    const bool old = now - oldest >= kIntakeHoldUs;
    // A steady flow keeps a few events held at every moment (the link acks
    // a batch while the next one commits), so the log would not start over
    // by itself: once a second, what is held then settles instead.
    const bool long_log = tick && intake_->used_bytes() > kIntakeRestartBytes;
    if (old || long_log || HeldBytes() > kIntakeMaxHeldBytes || intake_->used_bytes() > kIntakeMaxLogBytes) {
      if (Status s = Settle(); !s.ok()) {
        WS_LOG_WARN(kComponent, "could not move held events into the database; they stay in the intake log",
                    {{"error", s.ToString()}});
      }
    }
  }

  void NotifyListener() {
    std::shared_ptr<const std::function<void()>> listener;
    {
      std::lock_guard<std::mutex> lock(mu_);
      listener = listener_;
    }
    if (listener) (*listener)();
  }

  // Runs `body` in one write transaction; rolls back if anything fails.
  template <typename Body>
  Status Transact(Body&& body) {
    WS_TRY(db_->Begin());
    Status s = body();
    if (s.ok()) s = db_->Commit();
    if (!s.ok()) db_->Rollback();
    return s;
  }

  void ForgetWaiting(int64_t sequence) {
    for (auto& w : waiting_) w.erase(sequence);
  }

  // Acks commit without an fsync of their own: losing one to a power cut
  // only sends its events again (at-least-once), while an fsync per ack
  // batch would double the syncs of a busy link. The next append commit
  // syncs them along with itself; without one, the next maintenance pass
  // (at most kMaintenanceInterval later) syncs the WAL.
  void RunAcks(std::vector<AckOp>& acks) {
    size_t wanted = 0;  // in the database
    for (const AckOp& a : acks) {
      for (int64_t seq : a.sequences) wanted += Held(seq) ? 0U : 1U;
    }
    Status s;
    int64_t removed = 0;
    if (wanted > 0) {
      const int64_t now = Now();  // before the commits stop syncing: a clock shift syncs
      s = db_->SetDurableCommits(false);
      if (s.ok()) s = Transact([&]() -> Status { return RemoveAcked(acks, now, &removed); });
      if (Status restore = db_->SetDurableCommits(true); !restore.ok()) {
        // Every later commit must fsync again; a store that cannot promise
        // that must not acknowledge appends.
        WS_LOG_ERROR(kComponent, "could not restore synchronous=FULL", {{"error", restore.ToString()}});
        durable_commits_broken_ = true;
      }
      if (s.ok()) {
        unsynced_acks_ = true;
        RefreshTotals();
      }
    }
    // Held events go only with the others: the acks answer as one.
    if (s.ok()) {
      TakeHeldAcks(acks);
      MaybeRestartIntake();
    }
    FinishAcks(acks, removed, s);
  }

  // Inside a transaction: removes (or, with retention, moves) the events the
  // acks name; `*removed` counts those that were there.
  Status RemoveAcked(std::span<const AckOp> acks, int64_t now, int64_t* removed) {
    if (options_.retain_delivered_s > 0) {
      for (const AckOp& a : acks) {
        for (int64_t seq : a.sequences) {
          WS_ASSIGN_OR_RETURN(bool was_there, db_->RemoveDelivered(seq, /*retain=*/true, now));
          if (was_there) ++*removed;
        }
      }
      return Status::Ok();
    }
    // PUBACKs come in order, so the acknowledged sequences are mostly runs:
    // one range delete per run instead of one statement per event.
    std::vector<int64_t> seqs;
    for (const AckOp& a : acks) {
      for (int64_t seq : a.sequences) {
        // A held event has no row, unless this transaction settles it.
        if (settle_pending_ || !Held(seq)) seqs.push_back(seq);
      }
    }
    std::sort(seqs.begin(), seqs.end());
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    for (size_t i = 0; i < seqs.size();) {
      size_t j = i;
      while (j + 1 < seqs.size() && seqs[j + 1] == seqs[j] + 1) ++j;
      WS_ASSIGN_OR_RETURN(int64_t n, db_->RemoveDeliveredRange(seqs[i], seqs[j]));
      *removed += n;
      i = j + 1;
    }
    return Status::Ok();
  }

  // After the transaction that held the acks: bookkeeping and callbacks.
  void FinishAcks(std::vector<AckOp>& acks, int64_t removed, Status s) {
    if (s.ok()) {
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        stats_.removed_delivered += static_cast<uint64_t>(removed);
      }
      for (const AckOp& a : acks) {
        for (int64_t seq : a.sequences) ForgetWaiting(seq);
      }
    } else {
      s = s.WithContext("ack");
      WS_LOG_WARN(kComponent, "ack transaction failed; the events stay in the outbox", {{"error", s.ToString()}});
    }
    for (AckOp& a : acks) {
      if (a.done) a.done(s);
    }
  }

  // While an append batch's transaction is open (a lease that runs ahead
  // of it), the lease reads only events committed before it (the batch's
  // own are not acknowledged yet, and a failed batch takes them back), and
  // leaves sweeping and dead-lettering, which need transactions of their
  // own, to later.
  void RunLease(LeaseOp& op) {
    const int64_t now = JudgeTime(Now());
    const bool in_batch = open_batch_ != nullptr;
    if (!in_batch) {
      // Held events that waited too long go to the database first, where
      // the sweep judges their age.
      MaintainIntake(now, /*tick=*/false);
      SweepExpired(now);
      PurgeDelivered(now);
    }
    const int64_t committed = in_batch ? last_sequence_ : INT64_MAX;

    std::vector<LeasedEvent> out;
    {
      // Sized once (a drain leases 1,024 at a time): growing it moved every
      // event's strings again at each doubling.
      uint64_t stored = 0;
      for (const ClassUsage& c : usage_.classes) stored += c.count;
      out.reserve(static_cast<size_t>(std::min<uint64_t>(op.max_events, stored)));
    }
    std::vector<std::pair<int64_t, Status>> unreadable;
    // Cursors and the retry bookkeeping move only when the whole lease
    // succeeded.
    std::array<int64_t, kPriorityCount> cursor = cursor_;
    std::vector<std::pair<size_t, int64_t>> retried;
    for (Priority p : kAllPriorities) {
      if (out.size() >= op.max_events) break;
      const auto i = static_cast<size_t>(p);
      const size_t first = out.size();
      // Nacked events whose time has come. Those behind the cursor are read
      // one by one (the scan no longer reaches them); those ahead of it are
      // simply forgotten here, since the scan below now returns them.
      std::map<int64_t, int64_t>& waiting = waiting_[i];
      for (auto it = waiting.begin(); it != waiting.end() && out.size() < op.max_events;) {
        if (it->second > now) {
          ++it;
          continue;
        }
        if (it->first > cursor[i]) {
          it = waiting.erase(it);
          continue;
        }
        if (Status s = db_->ReadLeasableBySequence(it->first, now, &out, &unreadable); !s.ok()) {
          if (op.done) op.done(s.WithContext("lease"));
          return;
        }
        retried.emplace_back(i, it->first);
        ++it;
      }
      if (out.size() < op.max_events) {
        Status s = db_->ReadLeasable(p, cursor[i], committed, now, op.max_events - out.size(), &out, &unreadable,
                                     &cursor[i]);
        if (!s.ok()) {
          if (op.done) op.done(s.WithContext("lease"));
          return;
        }
        // The database has no more of this class: the held events follow.
        if (out.size() < op.max_events) LeaseHeld(p, op.max_events, &cursor[i], &out);
      }
      std::sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                [](const LeasedEvent& a, const LeasedEvent& b) { return a.sequence < b.sequence; });
    }
    cursor_ = cursor;
    for (const auto& [i, seq] : retried) waiting_[i].erase(seq);
    // A record that passed the integrity check but cannot be decoded will
    // never be deliverable; parking it keeps it for inspection and stops it
    // from blocking its class.
    for (const auto& [seq, why] : unreadable) {
      WS_LOG_ERROR(kComponent, "stored event cannot be decoded; dead-lettering it",
                   {{"sequence", std::to_string(seq)}, {"error", why.ToString()}});
      DeadLetterOp dead{seq, "record unreadable: " + why.message(), nullptr};
      if (in_batch) {
        deferred_dead_letters_.push_back(std::move(dead));
      } else {
        RunDeadLetter(dead);
      }
    }
    if (op.done) op.done(std::move(out));
  }

  void RunResetLeases() {
    // Every event leased but not acked since the last reset had one delivery
    // attempt that did not finish; remember that before forgetting leases.
    bool any = false;
    for (int64_t c : cursor_) any = any || c > 0;
    if (any) {
      const int64_t now = JudgeTime(Now());
      Status s = Transact([&]() -> Status {
        for (Priority p : kAllPriorities) {
          const int64_t c = cursor_[static_cast<size_t>(p)];
          if (c > 0) WS_TRY(db_->AddAttempt(p, c, now));
        }
        return Status::Ok();
      });
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, "could not count delivery attempts", {{"error", s.ToString()}});
      }
    }
    for (auto& [seq, e] : held_) {
      if (seq <= cursor_[static_cast<size_t>(e.priority)]) ++e.attempts;
    }
    // Events waiting for a retry time stay waiting: the scan from the start
    // skips them until their time has come.
    cursor_.fill(0);
  }

  void RunNack(NackOp& op) {
    const int64_t not_before = Now() + std::max<int64_t>(op.retry_in_us, 0);
    if (std::any_of(op.sequences.begin(), op.sequences.end(), [this](int64_t seq) { return Held(seq); })) {
      if (Status s = Settle(); !s.ok()) {
        if (op.done) op.done(s.WithContext("nack"));
        return;
      }
    }
    std::vector<std::pair<Priority, int64_t>> found;
    Status s;
    if (!op.sequences.empty()) {
      s = Transact([&]() -> Status {
        for (int64_t seq : op.sequences) {
          WS_ASSIGN_OR_RETURN(std::optional<Priority> p, db_->Nack(seq, not_before));
          if (p.has_value()) found.emplace_back(*p, seq);
        }
        return Status::Ok();
      });
    }
    if (s.ok()) {
      for (const auto& [p, seq] : found) waiting_[static_cast<size_t>(p)][seq] = not_before;
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.nacked += found.size();
    } else {
      s = s.WithContext("nack");
      WS_LOG_WARN(kComponent, "nack transaction failed", {{"error", s.ToString()}});
    }
    if (op.done) op.done(s);
  }

  void RunDeadLetter(DeadLetterOp& op) {
    bool found = false;
    const int64_t now = Now();
    if (Held(op.sequence)) {
      if (Status s = Settle(); !s.ok()) {
        if (op.done) op.done(s.WithContext("dead-letter"));
        return;
      }
    }
    Status s = Transact([&]() -> Status {
      dlq_count_ = std::max<uint64_t>(dlq_count_, 1);  // until the totals say otherwise
      WS_ASSIGN_OR_RETURN(found, db_->MoveToDeadLetters(op.sequence, op.reason, now));
      return Status::Ok();
    });
    if (s.ok() && !found) {
      s = NotFound("no event with sequence " + std::to_string(op.sequence) + " in the outbox");
    } else if (s.ok()) {
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.removed_dead_lettered;
      }
      ForgetWaiting(op.sequence);
      RefreshTotals();
      WS_LOG_WARN(kComponent, "event dead-lettered",
                  {{"sequence", std::to_string(op.sequence)}, {"reason", op.reason}});
    } else {
      s = s.WithContext("dead-letter");
    }
    if (op.done) op.done(s);
  }

  void RunListDeadLetters(ListDeadLettersOp& op) {
    std::vector<ws::DeadLetter> out;
    Status s = db_->ListDeadLetters(op.after_sequence, op.limit, &out);
    if (!op.done) return;
    if (!s.ok()) {
      op.done(s.WithContext("list dead letters"));
    } else {
      op.done(std::move(out));
    }
  }

  static std::string DeadLetterName(int64_t sequence, const std::string& id) {
    return sequence != 0 ? "sequence " + std::to_string(sequence) : "id \"" + id + "\"";
  }

  void RunRetryDeadLetter(RetryDeadLetterOp& op) {
    auto answer = [&op](Result<AppendOutcome> r) {
      if (op.done) op.done(std::move(r));
    };
    if (op.sequence < 0 || (op.sequence == 0 && op.id.empty())) {
      return answer(InvalidArgument("name the dead letter to retry by sequence (> 0) or by id"));
    }
    const int64_t now = Now();
    // It comes back under a new sequence, above the held ones.
    if (Status s = Settle(); !s.ok()) return answer(s.WithContext("retry dead letter"));
    BatchTally tally = StartTally();
    AppendOutcome outcome;
    Status s = Transact([&]() -> Status {
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::DeadLetterRow> row, db_->FindDeadLetter(op.sequence, op.id));
      if (!row.has_value()) return NotFound("no dead letter with " + DeadLetterName(op.sequence, op.id));
      WS_ASSIGN_OR_RETURN(std::optional<int64_t> queued, db_->FindQueuedId(row->id));
      if (queued.has_value()) {
        return AlreadyExists("event id \"" + row->id + "\" is already queued (sequence " + std::to_string(*queued) +
                             ")");
      }
      // The dead letter leaves as the event comes back: judge the limits
      // without its bytes counted twice.
      WS_TRY(db_->DeleteDeadLetters(row->sequence, {}).status());
      tally.usage.other_bytes -= std::min(tally.usage.other_bytes, row->bytes);
      bool refused = false;
      if (Status admit = Admit(row->priority, row->bytes, &tally, &refused); !admit.ok()) {
        return refused ? ResourceExhausted("dead letter " + std::to_string(row->sequence) +
                                           " cannot come back: " + admit.message())
                       : admit;
      }
      const int64_t seq = tally.last_sequence + 1;
      WS_TRY(db_->InsertEvent(sqlite::NewEventRow{seq, row->id, row->priority, row->stream, row->topic, now, 0,
                                                  row->bytes, row->record, 0}));
      tally.last_sequence = seq;
      WS_TRY(CoverSequences(&tally));
      tally.added[static_cast<size_t>(row->priority)] += 1;
      tally.usage.classes[static_cast<size_t>(row->priority)].count += 1;
      tally.usage.classes[static_cast<size_t>(row->priority)].bytes += row->bytes;
      outcome = AppendOutcome{seq, row->id, false};
      return Status::Ok();
    });
    if (!s.ok()) {
      if (s.code() != StatusCode::kNotFound && s.code() != StatusCode::kAlreadyExists &&
          s.code() != StatusCode::kResourceExhausted) {
        WS_LOG_WARN(kComponent, "retrying a dead letter failed", {{"error", s.ToString()}});
      }
      return answer(s.WithContext("retry dead letter"));
    }
    CommitTally(tally, now);
    RefreshTotals();  // the dead letters' count and bytes
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.dead_letters_retried;
    }
    WS_LOG_INFO(kComponent, "dead letter queued again",
                {{"id", outcome.id}, {"sequence", std::to_string(outcome.sequence)}});
    answer(outcome);
    NotifyListener();
  }

  void RunPurgeDeadLetters(PurgeDeadLettersOp& op) {
    auto answer = [&op](Result<uint64_t> r) {
      if (op.done) op.done(std::move(r));
    };
    if (op.sequence < 0) return answer(InvalidArgument("a dead letter's sequence is > 0"));
    int64_t purged = 0;
    Status s;
    if (op.sequence != 0 || !op.id.empty()) {
      s = Transact([&]() -> Status {
        WS_ASSIGN_OR_RETURN(purged, db_->DeleteDeadLetters(op.sequence, op.id));
        return Status::Ok();
      });
      if (s.ok() && purged == 0) s = NotFound("no dead letter with " + DeadLetterName(op.sequence, op.id));
    } else {
      // Everything: in chunks, so a large queue never builds one huge WAL.
      for (;;) {
        int64_t n = 0;
        s = Transact([&]() -> Status {
          WS_ASSIGN_OR_RETURN(n, db_->DeleteOldestDeadLetters(kSweepChunk));
          return Status::Ok();
        });
        if (!s.ok()) break;
        purged += n;
        if (n < kSweepChunk) break;
      }
    }
    if (purged > 0) {
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        stats_.removed_purged += static_cast<uint64_t>(purged);
      }
      RefreshTotals();
      WS_LOG_INFO(kComponent, "dead letters purged", {{"count", std::to_string(purged)}});
    }
    if (!s.ok()) return answer(s.WithContext("purge dead letters"));
    answer(static_cast<uint64_t>(purged));
  }

  void RunReplay(ReplayOp& op) {
    auto answer = [&op](Result<uint64_t> r) {
      if (op.done) op.done(std::move(r));
    };
    if (Status s = CheckReplayRange(op.range); !s.ok()) return answer(s);
    if (options_.retain_delivered_s <= 0) {
      return answer(
          FailedPrecondition("replay needs delivered events to be kept: storage.retain_delivered_s is 0, so none are"));
    }
    const int64_t now = Now();
    // Retention may have run out for some of them since the last sweep.
    PurgeDelivered(now);
    if (Status s = Settle(); !s.ok()) return answer(s.WithContext("replay"));
    BatchTally tally = StartTally();
    uint64_t replayed = 0;
    Status s = Transact([&]() -> Status {
      std::vector<int64_t> sequences;
      WS_TRY(db_->SelectDelivered(op.range, kMaxReplayEvents + 1, &sequences));
      if (sequences.size() > kMaxReplayEvents) {
        return InvalidArgument("the range selects more than " + std::to_string(kMaxReplayEvents) +
                               " delivered events; replay it in parts");
      }
      for (int64_t from : sequences) {
        WS_ASSIGN_OR_RETURN(std::optional<sqlite::DeliveredRow> row, db_->ReadDelivered(from));
        if (!row.has_value()) continue;
        // Still queued (replayed before and not yet delivered): it is going
        // out anyway.
        WS_ASSIGN_OR_RETURN(std::optional<int64_t> queued, db_->FindQueuedId(row->id));
        if (queued.has_value()) continue;
        const uint64_t bytes = row->record.size() + row->topic.size() + row->stream.size();
        bool refused = false;
        if (Status admit = Admit(row->priority, bytes, &tally, &refused); !admit.ok()) {
          return refused ? ResourceExhausted("replay of sequence " + std::to_string(from) +
                                             " refused, nothing replayed: " + admit.message())
                         : admit;
        }
        const int64_t seq = tally.last_sequence + 1;
        WS_TRY(db_->InsertEvent(sqlite::NewEventRow{seq, row->id, row->priority, row->stream, row->topic, now, 0, bytes,
                                                    row->record, from}));
        tally.last_sequence = seq;
        tally.added[static_cast<size_t>(row->priority)] += 1;
        tally.usage.classes[static_cast<size_t>(row->priority)].count += 1;
        tally.usage.classes[static_cast<size_t>(row->priority)].bytes += bytes;
        ++replayed;
      }
      WS_TRY(CoverSequences(&tally));
      return Status::Ok();
    });
    if (!s.ok()) {
      if (s.code() != StatusCode::kInvalidArgument && s.code() != StatusCode::kResourceExhausted) {
        WS_LOG_WARN(kComponent, "replay failed; nothing was replayed", {{"error", s.ToString()}});
      }
      return answer(s.WithContext("replay"));
    }
    CommitTally(tally, now);
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.replayed += replayed;
    }
    WS_LOG_INFO(kComponent, "delivered events queued again for replay", {{"count", std::to_string(replayed)}});
    answer(replayed);
    if (replayed > 0) NotifyListener();
  }

  Status RestoreDurableCommits() {
    WS_TRY(db_->SetDurableCommits(true).WithContext("restore synchronous=FULL"));
    durable_commits_broken_ = false;
    return Status::Ok();
  }

  // ---- wall clock steps (committer thread; before Start, the opening thread) ----

  // The wall time for what the committer does next. Outside a transaction
  // this also looks for a step of the wall clock (core/wall_clock_watch.h)
  // and carries one into the stored times before anything judges them by
  // the new clock: accepted, expiry and retry times of every row stored
  // before it move by the step, so TTLs, max_age_s and retries count the
  // time that passed, not the distance the clock was set. Inside an append
  // batch it is the batch's time.
  int64_t Now() {
    if (open_batch_ != nullptr) return open_batch_->now;
    const Clock::Reading r = clock_->ReadBoth();
    const int64_t step = clock_watch_.Observe(r.wall_us, r.mono_ns / 1000);
    if (step != 0) BeginClockShift(step);
    if (shift_.has_value()) FinishClockShift();
    return r.wall_us;
  }

  // The time to judge stored times by: while a shift could not finish, the
  // rows it has not reached still hold the old clock's times.
  int64_t JudgeTime(int64_t now) const { return shift_.has_value() ? now - shift_->delta_us : now; }

  void BeginClockShift(int64_t step) {
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.clock_steps;
    }
    const std::string step_s = std::to_string(static_cast<double>(step) / 1e6);
    if (shift_.has_value()) {
      WS_LOG_ERROR(kComponent,
                   "the wall clock was set again before the stored times had followed the last change; "
                   "they follow only that one",
                   {{"step_s", step_s}});
      return;
    }
    // The held events' times move with the others.
    if (Status s = Settle(); !s.ok()) {
      WS_LOG_WARN(kComponent, "could not move held events into the database before a clock step",
                  {{"error", s.ToString()}});
    }
    Result<int64_t> first = db_->FirstSequence();
    if (first.ok() && *first == 0) return;  // nothing stored
    // Without the first sequence the shift starts from 0: slower, not wrong.
    const int64_t from = first.ok() ? *first - 1 : 0;
    shift_ = sqlite::ClockShift{step, last_sequence_, from, 0};
    WS_LOG_WARN(kComponent, "the wall clock was set; the stored times move with it",
                {{"step_s", step_s}, {"up_to_sequence", std::to_string(last_sequence_)}});
  }

  // Runs shift_ to its end, each transaction recording how far it got (a
  // restart goes on from there). A failure leaves it for the next call, and
  // until it finishes nothing is removed for its age.
  void FinishClockShift() {
    const auto start = std::chrono::steady_clock::now();
    int64_t rows = 0;
    while (shift_->done_up_to < shift_->up_to) {
      const int64_t last = shift_->up_to - shift_->done_up_to > kClockShiftChunk
                               ? shift_->done_up_to + kClockShiftChunk
                               : shift_->up_to;
      int64_t n = 0;
      Status s = Transact([&]() -> Status {
        WS_ASSIGN_OR_RETURN(n, db_->ShiftTimes(*shift_, last));
        return Status::Ok();
      });
      if (!s.ok()) {
        bool first_failure = false;
        {
          std::lock_guard<std::mutex> lock(stats_mu_);
          first_failure = !stats_.clock_shift_pending;
          stats_.clock_shift_pending = true;
        }
        if (first_failure) {
          WS_LOG_ERROR(kComponent,
                       "ALARM: the stored times could not follow the wall clock; nothing is removed for its age "
                       "until they do",
                       {{"error", s.ToString()}});
        }
        return;
      }
      rows += n;
      shift_->done_up_to = last;
    }
    // The retry times kept in memory move like those in the rows.
    for (auto& waiting : waiting_) {
      for (auto& [seq, not_before] : waiting) {
        if (seq > shift_->up_to || (shift_->only_before_us > 0 && not_before >= shift_->only_before_us)) continue;
        not_before = std::max<int64_t>(not_before + shift_->delta_us, 1);
      }
    }
    const std::string ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count());
    WS_LOG_INFO(kComponent, "stored times moved with the wall clock",
                {{"rows", std::to_string(rows)}, {"shift_ms", ms}});
    shift_.reset();
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.clock_shift_pending = false;
    }
    RefreshTotals();  // the oldest accepted time of each class moved
  }

  void RunMaintenance() {
    if (unsynced_acks_) {
      Status s = db_->SyncWal();
      if (s.ok()) {
        unsynced_acks_ = false;
      } else {
        WS_LOG_WARN(kComponent, "could not sync acknowledged deliveries; they may be sent again after a power cut",
                    {{"error", s.ToString()}});
      }
    }
    const int64_t now = Now();
    MaintainIntake(now, /*tick=*/true);
    SweepExpired(now);
    PurgeDelivered(now);
    MaybeCompact();
  }

  // See SqliteOutboxOptions::compact_min_free_bytes. Two page counts read
  // from the header each second; the rewrite holds up the committer while
  // it copies the live pages twice and cuts the file back (89-98 ms for a
  // 310-330 MB file holding nothing, on the benchmark machine). A failure
  // changes nothing: it is logged and tried again after kCompactRetry.
  void MaybeCompact() {
    if (options_.compact_min_free_bytes == 0 || options_.compact_max_live_bytes == 0) return;
    // Only once the acks are synced and synchronous=FULL is back: the
    // rewrite's commit must sync like any append's.
    if (unsynced_acks_ || durable_commits_broken_) return;
    const auto start = std::chrono::steady_clock::now();
    if (start < compact_not_before_) return;
    Result<sqlite::FileSpace> space = db_->Space();
    if (!space.ok()) {
      WS_LOG_WARN(kComponent, "reading the store's free pages failed", {{"error", space.status().ToString()}});
      compact_not_before_ = start + kCompactRetry;
      return;
    }
    if (space->FreeBytes() < static_cast<int64_t>(options_.compact_min_free_bytes) ||
        space->LiveBytes() > static_cast<int64_t>(options_.compact_max_live_bytes)) {
      return;
    }
    Status s = db_->Compact();
    const std::string ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count());
    if (!s.ok()) {
      WS_LOG_WARN(kComponent, "compacting the store failed; it keeps its free pages",
                  {{"error", s.ToString()}, {"free_bytes", std::to_string(space->FreeBytes())}});
      compact_not_before_ = start + kCompactRetry;
      return;
    }
    // Cuts the file back unless another checkpoint is running (it does the
    // same) or a reader still needs frames (a later checkpoint does it).
    Result<sqlite::CheckpointResult> ckpt = db_->Checkpoint();
    if (!ckpt.ok()) {
      WS_LOG_WARN(kComponent, "checkpoint after compacting failed; a later one cuts the file back",
                  {{"error", ckpt.status().ToString()}});
    }
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.compactions;
      stats_.compacted_bytes += static_cast<uint64_t>(space->FreeBytes());
    }
    WS_LOG_INFO(kComponent, "store compacted after its backlog drained",
                {{"freed_bytes", std::to_string(space->FreeBytes())},
                 {"live_bytes", std::to_string(space->LiveBytes())},
                 {"compact_ms", ms}});
  }

  // Deletes in chunks with `chunk` (one transaction each) until a chunk
  // comes back short; returns how many, logging a failure under `what`.
  template <typename Chunk>
  int64_t DeleteInChunks(const char* what, Chunk&& chunk) {
    int64_t total = 0;
    for (;;) {
      int64_t n = 0;
      Status s = Transact([&]() -> Status {
        WS_ASSIGN_OR_RETURN(n, chunk());
        return Status::Ok();
      });
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, what, {{"error", s.ToString()}});
        break;
      }
      total += n;
      if (n < kSweepChunk) break;
    }
    return total;
  }

  // Best effort: a failure is logged and retried at the next Lease or idle
  // tick; leasing skips expired events either way.
  void SweepExpired(int64_t now) {
    if (shift_.has_value()) return;  // times not yet comparable (see FinishClockShift)
    int64_t total = 0;
    Result<bool> any = db_->AnyExpired(now);
    if (!any.ok()) {
      WS_LOG_WARN(kComponent, "expiry check failed", {{"error", any.status().ToString()}});
    } else if (*any) {
      total += DeleteInChunks("removing expired events failed", [&] { return db_->DeleteExpired(now, kSweepChunk); });
    }
    // max_age_s: one index lookup per limited class when nothing is due.
    for (Priority p : kAllPriorities) {
      const int64_t cutoff = MaxAgeCutoffUs(limits_.classes[static_cast<size_t>(p)], now);
      if (cutoff == 0) continue;
      Result<std::optional<sqlite::EventHead>> head = db_->OldestInClass(p);
      if (!head.ok()) {
        WS_LOG_WARN(kComponent, "age check failed", {{"error", head.status().ToString()}});
        continue;
      }
      if (!head->has_value() || (*head)->accepted_us > cutoff) continue;
      total += DeleteInChunks("removing events past max_age_s failed",
                              [&] { return db_->DeleteOlderThan(p, cutoff, kSweepChunk); });
    }
    if (total == 0) return;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.removed_expired += static_cast<uint64_t>(total);
    }
    RefreshTotals();
    WS_LOG_INFO(kComponent, "expired events removed", {{"count", std::to_string(total)}});
  }

  void PurgeDelivered(int64_t now) {
    if (shift_.has_value()) return;  // as in SweepExpired
    const int64_t cutoff = now - options_.retain_delivered_s * 1'000'000;
    Result<bool> any = db_->AnyDeliveredUpTo(cutoff);
    if (!any.ok()) {
      WS_LOG_WARN(kComponent, "retention check failed", {{"error", any.status().ToString()}});
      return;
    }
    if (!*any) return;
    DeleteInChunks("removing delivered events past retention failed",
                   [&] { return db_->PurgeDeliveredUpTo(cutoff, kSweepChunk); });
  }

  // After removals: the totals table is exact and tiny, so reading it back
  // is simpler and safer than mirroring every removal in memory.
  void RefreshTotals() {
    Result<sqlite::StoreTotals> t = db_->ReadTotals();
    if (!t.ok()) {
      WS_LOG_WARN(kComponent, "reading store totals failed", {{"error", t.status().ToString()}});
      return;
    }
    ApplyTotals(*t);
  }

  static StoreUsage UsageOf(const sqlite::StoreTotals& t) {
    StoreUsage u;
    for (size_t p = 0; p < kPriorityCount; ++p) u.classes[p] = {t.backlog[p].count, t.backlog[p].bytes};
    u.other_bytes = t.dlq_bytes;
    return u;
  }

  void ApplyTotals(const sqlite::StoreTotals& t) {
    usage_ = WithIntake(UsageOf(t), nullptr);
    dlq_count_ = t.dlq_count;
    std::lock_guard<std::mutex> lock(stats_mu_);
    for (size_t p = 0; p < kPriorityCount; ++p) {
      stats_.backlog[p] = t.backlog[p];
      stats_.backlog[p].count = usage_.classes[p].count;
      stats_.backlog[p].bytes = usage_.classes[p].bytes;
      if (t.backlog[p].count == 0) stats_.backlog[p].oldest_accepted_us = OldestHeld(static_cast<Priority>(p));
    }
    stats_.dlq_count = t.dlq_count;
  }

  const SqliteOutboxOptions options_;
  Clock* const clock_;
  StoreLimits limits_;

  // Committer thread only (and the constructor, before the thread starts,
  // and CloseDatabase, after it ended).
  std::unique_ptr<sqlite::OutboxDb> db_;
  int64_t last_sequence_ = 0;
  int64_t sequence_ceiling_ = 0;  // the meta row's value, >= last_sequence_
  // Append calls per batch lately (a decaying maximum, at least 1).
  size_t last_batch_requests_ = 1;
  size_t linger_backoff_ = 0;                  // batches skipped after the last wait that gained nothing
  size_t linger_skip_ = kMinLingerBackoff;     // of those, still to skip
  std::chrono::steady_clock::time_point last_append_batch_{};  // when the last append batch ran
  // Acks committed without an fsync since the last synced commit.
  bool unsynced_acks_ = false;
  bool durable_commits_broken_ = false;  // synchronous=FULL could not be set back after an ack
  std::chrono::steady_clock::time_point compact_not_before_{};  // after a failed compaction
  // Backlog per class and dead letters, as counted against the limits
  // (the held events included).
  StoreUsage usage_;
  // The intake log and the events held only there (see "the intake"
  // above); null when delivered events are kept (an ack moves a row).
  std::unique_ptr<sqlite::IntakeLog> intake_;
  std::map<int64_t, sqlite::IntakeEvent> held_;          // by sequence
  std::unordered_map<std::string, int64_t> held_ids_;    // id -> sequence
  std::array<ClassUsage, kPriorityCount> held_usage_{};  // their count and bytes per class
  std::vector<int64_t> unwritten_marks_;                 // acks of held events, for the next chunk
  bool settle_pending_ = false;  // the open transaction inserts the held events
  std::array<int64_t, kPriorityCount> cursor_{};  // last leased sequence per class
  // Per class: nacked events (sequence -> retry time) that the cursor scan
  // may already have passed. Bounded by what the link had in flight.
  std::array<std::map<int64_t, int64_t>, kPriorityCount> waiting_;
  WallClockWatch clock_watch_;
  std::optional<sqlite::ClockShift> shift_;  // a clock step not yet carried into every stored time

  // The queue and the listener.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  size_t others_queued_ = 0;  // operations in queue_ other than appends and acks
  bool stopping_ = false;
  uint64_t dlq_count_ = 0;        // dead letters, as of the last totals (or more)
  bool delivered_empty_ = false;  // no delivered events can be in the file
  // Whether the Append call being stored has its savepoint yet: one-event
  // calls take it only at their first write (committer thread only).
  bool savepoint_taken_ = false;
  OpenBatch* open_batch_ = nullptr;  // the append batch whose transaction is open
  std::vector<DeadLetterOp> deferred_dead_letters_;  // found by leases inside it
  bool committer_waiting_ = false;  // the committer sleeps on cv_ ...
  size_t wake_at_queued_ = 1;       // ... until this many operations are queued
  std::shared_ptr<const std::function<void()>> listener_;

  mutable std::mutex stats_mu_;
  OutboxStats stats_;

  std::atomic<bool> check_stop_{false};
  // The gate (see Start): committer thread, except check_done_ and
  // check_result_ (under mu_, set by the check thread).
  bool gated_ = false;
  bool gate_retry_ = false;  // opening failed; tried again at the next tick
  bool replaced_ = false;    // the damaged file was moved aside already
  std::deque<Op> held_ops_;  // calls that wait for the check, in order
  bool check_done_ = false;
  Status check_result_;

  // Background checkpoints (see StartCheckpoints).
  std::unique_ptr<sqlite::CheckpointConnection> checkpointer_;  // null: the committer checkpoints
  std::mutex ckpt_mu_;
  std::condition_variable ckpt_cv_;
  bool ckpt_wanted_ = false;   // the thread has a checkpoint to run
  bool ckpt_running_ = false;  // asked for and not finished
  bool ckpt_stop_ = false;
  bool ckpt_failing_ = false;
  int ckpt_copied_ = 0;  // frames of the current WAL known to be in the file
  // Last: they start after everything above exists.
  std::thread check_thread_;
  std::thread ckpt_thread_;
  std::thread thread_;
};

// Opens the intake log beside the database and moves the events an earlier
// run left held there into the database (each id once: a settle whose log
// could not start over leaves events that are already there), then starts
// the log over. A damaged log is moved aside like a damaged database and
// the node goes on with a new one. Null when the store keeps delivered
// events: then an ack moves a row in the database, and appends go there.
//
// With `hold` (the database's full check runs in the background and new
// events wait for it in the log) the events stay in the log and go to
// *hold instead, each id once as above, with *highest the highest sequence
// the log names: nothing is written into the database before the check.
Result<std::unique_ptr<sqlite::IntakeLog>> OpenIntake(const SqliteOutboxOptions& options, const Clock& clock,
                                                      sqlite::OutboxDb& db, sqlite::OpenReport* report,
                                                      std::vector<sqlite::IntakeEvent>* hold, int64_t* highest_out) {
  const std::string path = options.path + kIntakeSuffix;
  std::vector<sqlite::IntakeEvent> events;
  int64_t highest = 0;
  Result<std::unique_ptr<sqlite::IntakeLog>> log = sqlite::IntakeLog::Open(path, options.vfs, &events, &highest);
  if (!log.ok() && log.status().code() == StatusCode::kDataLoss) {
    WS_LOG_ERROR(kComponent, "ALARM: the intake log is damaged; moving it aside and starting a new one",
                 {{"path", path}, {"error", log.status().ToString()}});
    WS_ASSIGN_OR_RETURN(std::string moved_to, Quarantine(path, clock));
    WS_LOG_ERROR(kComponent, "damaged intake log quarantined", {{"path", path}, {"moved_to", moved_to}});
    events.clear();
    highest = 0;
    log = sqlite::IntakeLog::Open(path, options.vfs, &events, &highest);
  }
  if (!log.ok()) return log.status();
  std::unique_ptr<sqlite::IntakeLog> none;
  if (events.empty() && highest == 0) {
    return options.retain_delivered_s > 0 || !options.intake_log ? std::move(none) : std::move(log).value();
  }

  const int64_t last = std::max(report->last_sequence, highest);
  if (hold != nullptr) {
    for (sqlite::IntakeEvent& e : events) {
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::StoredId> found, db.FindId(e.id));
      if (!found.has_value()) hold->push_back(std::move(e));
    }
    *highest_out = highest;
    return std::move(log).value();
  }
  int64_t moved = 0;
  WS_TRY(db.Begin());
  Status s = [&]() -> Status {
    for (const sqlite::IntakeEvent& e : events) {
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::StoredId> found, db.FindId(e.id));
      if (found.has_value()) continue;
      WS_TRY(db.InsertEvent(RowOf(e)));
      ++moved;
    }
    return db.SetLastSequence(last);
  }();
  if (s.ok()) s = db.Commit();
  if (!s.ok()) {
    db.Rollback();
    return s.WithContext("move the intake log's events into the database");
  }
  report->last_sequence = last;
  WS_ASSIGN_OR_RETURN(report->totals, db.ReadTotals());
  if (moved > 0) {
    WS_LOG_INFO(kComponent, "events held in the intake log at the last stop moved into the database",
                {{"count", std::to_string(moved)}});
  }
  WS_TRY((*log)->Clear().WithContext("start the intake log over"));
  if (options.retain_delivered_s > 0 || !options.intake_log) return none;
  return std::move(log).value();
}

Result<std::unique_ptr<SqliteOutbox>> SqliteOutbox::Open(SqliteOutboxOptions options) {
  if (options.path.empty()) return InvalidArgument("storage path must not be empty");
  if (options.max_batch_events == 0) return InvalidArgument("max_batch_events must be at least 1");
  if (options.cache_kib <= 0) return InvalidArgument("cache_kib must be positive");
  if (options.wal_checkpoint_bytes < kMinWalCheckpointBytes || options.wal_checkpoint_bytes > kMaxWalCheckpointBytes) {
    return InvalidArgument("wal_checkpoint_bytes must be from " + std::to_string(kMinWalCheckpointBytes) + " to " +
                           std::to_string(kMaxWalCheckpointBytes));
  }
  if (options.commit_window_us < 0) return InvalidArgument("commit_window_us must not be negative");
  if (options.retain_delivered_s < 0) return InvalidArgument("retain_delivered_s must not be negative");
  for (const ClassLimits& c : options.classes) {
    if (c.max_age_s < 0) return InvalidArgument("a class's max_age_s must not be negative");
  }
  Clock* clock = options.clock != nullptr ? options.clock : &SystemClock();

  const std::string folder = DirName(options.path);
  WS_TRY(MakeDirectories(folder).WithContext("open outbox"));
  // SQLite creates -wal and -shm next to the file and a quarantine renames
  // in this folder; asking up front gives a clear error where SQLite would
  // report only "unable to open database file".
  if (::access(folder.c_str(), W_OK | X_OK) != 0) {
    return ErrnoStatus(errno, "open outbox: folder " + folder + " is not writable");
  }

  // Open time is measured on the real clock even under a FakeClock.
  const int64_t started_ns = SystemClock().MonotonicNanos();
  Result<std::string> boot_id = KernelBootId();
  if (!boot_id.ok()) {
    WS_LOG_WARN(kComponent, "the boot id is unknown; after a crash the store is checked in full at open",
                {{"error", boot_id.status().ToString()}});
  }
  const bool can_hold = options.intake_log && options.retain_delivered_s == 0;
  const CheckPlan plan =
      PlanCheck(options.path, options.full_check_max_bytes, boot_id.ok() ? *boot_id : "", can_hold);
  // From here on the file may change: the marker described it as it was.
  RemoveMarker(options.path + kCleanSuffix);
  sqlite::OutboxDbOptions db_options{options.path, options.vfs, options.cache_kib, plan.full,
                                     options.wal_checkpoint_bytes};
  sqlite::OpenReport report;
  Result<std::unique_ptr<sqlite::OutboxDb>> db = sqlite::OutboxDb::Open(db_options, &report);
  bool quarantined = false;
  bool background = plan.background;
  // The node must keep collecting events: keep the evidence, start afresh.
  auto start_afresh = [&](const Status& damage) -> Status {
    WS_LOG_ERROR(kComponent, "the outbox file is damaged; moving it aside and starting a fresh store",
                 {{"path", options.path}, {"error", damage.ToString()}});
    WS_ASSIGN_OR_RETURN(std::string moved_to, Quarantine(options.path, *clock));
    WS_LOG_ERROR(kComponent, "damaged outbox quarantined", {{"path", options.path}, {"moved_to", moved_to}});
    RemoveMarker(options.path + kNeedsCheckSuffix);
    quarantined = true;
    background = false;
    report = sqlite::OpenReport{};
    db_options.full_check = true;
    db = sqlite::OutboxDb::Open(db_options, &report);
    return Status::Ok();
  };
  if (!db.ok() && db.status().code() == StatusCode::kDataLoss) {
    WS_TRY(start_afresh(db.status()));
  } else if (db.ok() && PathExists(options.path + kNeedsCheckSuffix)) {
    // The full check just passed: whatever the background check saw (a
    // read error of the moment) is not there now.
    WS_LOG_WARN(kComponent, "the store passed the full check the last background check asked for",
                {{"path", options.path}});
    RemoveMarker(options.path + kNeedsCheckSuffix);
  }
  if (!db.ok()) return db.status().WithContext("open outbox " + options.path);
  // While the full check runs in the background (gated, see Impl::Start)
  // the events an earlier run left in the intake log stay held there.
  std::vector<sqlite::IntakeEvent> held;
  int64_t held_highest = 0;
  auto hold = [&] { return background && can_hold ? &held : nullptr; };
  Result<std::unique_ptr<sqlite::IntakeLog>> intake = OpenIntake(options, *clock, **db, &report, hold(), &held_highest);
  if (!intake.ok() && intake.status().code() == StatusCode::kDataLoss && !report.full_check) {
    // Only the structural check ran, and moving what the intake log held
    // (after a crash) read a damaged page: as if the full check had found
    // it. That move is one transaction, so the log still holds every event
    // and they go into the fresh store.
    if (Status s = (*db)->KeepFilesAtClose(); !s.ok()) {
      WS_LOG_WARN(kComponent, "the damaged store's WAL may be checkpointed into it as it closes",
                  {{"error", s.ToString()}});
    }
    db->reset();
    WS_TRY(start_afresh(intake.status()));
    if (!db.ok()) return db.status().WithContext("open outbox " + options.path);
    held.clear();
    intake = OpenIntake(options, *clock, **db, &report, hold(), &held_highest);
  }
  if (!intake.ok()) return intake.status().WithContext("open outbox " + options.path);

  uint64_t backlog = 0;
  for (const ClassBacklog& b : report.totals.backlog) backlog += b.count;
  const int64_t elapsed_us = (SystemClock().MonotonicNanos() - started_ns) / 1000;
  WS_LOG_INFO(kComponent, "outbox opened",
              {{"path", options.path},
               {"open_ms", std::to_string(static_cast<double>(elapsed_us) / 1000.0)},
               {"check", report.full_check ? "full" : "structural (full check in the background)"},
               {"check_reason", plan.why},
               {"check_ms", std::to_string(static_cast<double>(report.check_us) / 1000.0)},
               {"backlog", std::to_string(backlog)},
               {"dlq", std::to_string(report.totals.dlq_count)},
               {"last_sequence", std::to_string(report.last_sequence)},
               {"schema_found", std::to_string(report.schema_version_found)},
               {"sqlite", LibraryVersion()}});

  if (boot_id.ok()) {
    // Written once the checks this open called for have passed (a run
    // killed during its full check leaves the last boot's marker, so the
    // next start checks in full again). A store without it is checked in
    // full after a crash. No sync: after a power cut no marker can name
    // the new boot, whatever the storage kept of it.
    if (Status s = ReplaceFileUntilReboot(options.path + kBootSuffix, BootMarkerText(*boot_id)); !s.ok()) {
      WS_LOG_WARN(kComponent, "could not note the boot the store is open in; after a crash it is checked in full",
                  {{"error", s.ToString()}});
    }
  }
  auto impl = std::make_unique<Impl>(std::move(options), clock, std::move(db).value(), report, quarantined);
  impl->SetIntake(std::move(intake).value(), std::move(held), held_highest, report.totals);
  impl->PrepareClockShift();
  WS_TRY(impl->LoadWaiting().WithContext("open outbox: read retry times"));
  WS_TRY(impl->LoadDeliveredState().WithContext("open outbox: look for delivered events"));
  impl->StartCheckpoints();
  impl->Start(background);
  // The constructor is private, so make_unique cannot reach it; the pointer
  // is owned the moment it exists.
  return std::unique_ptr<SqliteOutbox>(new SqliteOutbox(std::move(impl)));
}

SqliteOutbox::SqliteOutbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// Shuts down in the destructor's body, while the object is still whole: a
// callback that runs during the drain may still call this outbox.
SqliteOutbox::~SqliteOutbox() { impl_->Shutdown(); }

void SqliteOutbox::Append(std::vector<OutboxEntry> entries, AppendDone done) {
  AppendOp op{std::move(entries), std::move(done), std::chrono::steady_clock::now()};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::Lease(size_t max_events, LeaseDone done) {
  LeaseOp op{max_events, std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::Ack(std::vector<int64_t> sequences, StatusDone done) {
  AckOp op{std::move(sequences), std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::ResetLeases() {
  ResetLeasesOp op;
  static_cast<void>(impl_->Enqueue(op));  // after shutdown there are no leases left to reset
}

void SqliteOutbox::DeadLetter(int64_t sequence, std::string reason, StatusDone done) {
  DeadLetterOp op{sequence, std::move(reason), std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::Nack(std::vector<int64_t> sequences, int64_t retry_in_us, StatusDone done) {
  NackOp op{std::move(sequences), retry_in_us, std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::ListDeadLetters(int64_t after_sequence, size_t limit,
                                   std::function<void(Result<std::vector<ws::DeadLetter>>)> done) {
  ListDeadLettersOp op{after_sequence, limit, std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::RetryDeadLetter(int64_t sequence, std::string id, std::function<void(Result<AppendOutcome>)> done) {
  RetryDeadLetterOp op{sequence, std::move(id), std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::PurgeDeadLetters(int64_t sequence, std::string id, std::function<void(Result<uint64_t>)> done) {
  PurgeDeadLettersOp op{sequence, std::move(id), std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::Replay(const ReplayRange& range, std::function<void(Result<uint64_t>)> done) {
  ReplayOp op{range, std::move(done)};
  if (!impl_->Enqueue(op) && op.done) op.done(ShuttingDown());
}

void SqliteOutbox::SetAppendListener(std::function<void()> listener) { impl_->SetListener(std::move(listener)); }

OutboxStats SqliteOutbox::Stats() const { return impl_->Stats(); }

std::string SqliteOutbox::LibraryVersion() { return sqlite3_libversion(); }

}  // namespace ws
