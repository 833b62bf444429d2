#include "adapters/sqlite/sqlite_outbox.h"

#include <pthread.h>
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "adapters/sqlite/outbox_db.h"
#include "platform/file_system.h"
#include "platform/log.h"

namespace ws {
namespace {

constexpr std::string_view kComponent = "outbox";

// Expiry and retention deletes run in chunks of this many rows, each its own
// transaction, so a mass expiry never builds one huge WAL.
constexpr int64_t kSweepChunk = 2048;

// How often the store looks for expired events and stale deliveries.
constexpr auto kMaintenanceInterval = std::chrono::seconds(1);

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

struct AppendOp {
  std::vector<OutboxEntry> entries;
  Outbox::AppendDone done;
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
using Op = std::variant<AppendOp, LeaseOp, AckOp, ResetLeasesOp, DeadLetterOp>;

// What an append batch has written so far inside its transaction.
struct BatchTally {
  int64_t last_sequence = 0;
  uint64_t total_bytes = 0;
  uint64_t new_events = 0;
  std::array<uint64_t, kPriorityCount> count{};
  std::array<uint64_t, kPriorityCount> bytes{};
};

}  // namespace

class SqliteOutbox::Impl {
 public:
  Impl(SqliteOutboxOptions options, Clock* clock, std::unique_ptr<sqlite::OutboxDb> db,
       const sqlite::OpenReport& report, bool quarantined)
      : options_(std::move(options)), clock_(clock), db_(std::move(db)), last_sequence_(report.last_sequence) {
    ApplyTotals(report.totals);
    stats_.last_sequence = report.last_sequence;
    stats_.quarantined_at_start = quarantined;
  }

  ~Impl() { Shutdown(); }

  // Refuses new calls, lets the committer finish what is queued, joins it.
  // Idempotent. Not from the committer thread itself.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void Start() {
    thread_ = std::thread([this] { Run(); });
    // The name only helps top/gdb; failing to set it changes nothing.
    static_cast<void>(pthread_setname_np(thread_.native_handle(), "ws-outbox"));
  }

  // Queues `op`; false (and `op` untouched) once shutdown has begun.
  template <typename T>
  bool Enqueue(T& op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return false;
      queue_.emplace_back(std::move(op));
    }
    cv_.notify_one();
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
  // ---- committer thread ----

  void Run() {
    // Maintenance keeps its cadence under load too: an offline gateway that
    // only appends (nobody leases) must still drop expired events.
    auto next_maintenance = std::chrono::steady_clock::now() + kMaintenanceInterval;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (std::chrono::steady_clock::now() >= next_maintenance) {
        lock.unlock();
        RunMaintenance();
        lock.lock();
        next_maintenance = std::chrono::steady_clock::now() + kMaintenanceInterval;
      }
      if (queue_.empty()) {
        if (stopping_) return;
        cv_.wait_until(lock, next_maintenance, [this] { return stopping_ || !queue_.empty(); });
        continue;
      }
      if (std::holds_alternative<AppendOp>(queue_.front())) {
        std::vector<AppendOp> batch;
        size_t events = 0;
        GatherAppends(lock, &batch, &events);
        lock.unlock();
        RunAppendBatch(batch);
        lock.lock();
      } else if (std::holds_alternative<AckOp>(queue_.front())) {
        // Adjacent acks share one transaction (one fsync).
        std::vector<AckOp> acks;
        while (!queue_.empty() && std::holds_alternative<AckOp>(queue_.front())) {
          acks.push_back(std::move(std::get<AckOp>(queue_.front())));
          queue_.pop_front();
        }
        lock.unlock();
        RunAcks(acks);
        lock.lock();
      } else {
        Op op = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        if (auto* lease = std::get_if<LeaseOp>(&op)) {
          RunLease(*lease);
        } else if (auto* dead = std::get_if<DeadLetterOp>(&op)) {
          RunDeadLetter(*dead);
        } else {
          RunResetLeases();
        }
        lock.lock();
      }
    }
  }

  // Moves the appends at the head of the queue into `batch`, up to
  // max_batch_events (a single larger call goes alone). Appends never jump
  // ahead of another queued operation, so call order holds.
  void TakeAppends(std::vector<AppendOp>* batch, size_t* events) {
    while (!queue_.empty()) {
      auto* op = std::get_if<AppendOp>(&queue_.front());
      if (op == nullptr) return;
      if (*events > 0 && *events + op->entries.size() > options_.max_batch_events) return;
      *events += op->entries.size();
      batch->push_back(std::move(*op));
      queue_.pop_front();
    }
  }

  // Takes the appends at the head of the queue; if that empties the queue
  // and the batch has room, waits up to commit_window_us for more producers.
  // The window is measured on the real steady clock: it trades latency for
  // fewer fsyncs and is no policy a test needs to move by hand.
  void GatherAppends(std::unique_lock<std::mutex>& lock, std::vector<AppendOp>* batch, size_t* events) {
    TakeAppends(batch, events);
    if (options_.commit_window_us <= 0) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.commit_window_us);
    while (queue_.empty() && !stopping_ && *events < options_.max_batch_events) {
      if (!cv_.wait_until(lock, deadline, [this] { return stopping_ || !queue_.empty(); })) return;
      TakeAppends(batch, events);
    }
  }

  void RunAppendBatch(std::vector<AppendOp>& batch) {
    const int64_t now = clock_->WallMicros();
    std::vector<Result<std::vector<AppendOutcome>>> results;
    results.reserve(batch.size());
    BatchTally tally;
    tally.last_sequence = last_sequence_;

    // A storage failure (disk full, I/O error) dooms the whole transaction;
    // a request's own rejection (duplicate id with other content, store
    // full) is undone by its savepoint and the others still commit.
    Status storage = db_->Begin();
    size_t failed_at = batch.size();  // the request during which storage failed, if any
    if (storage.ok()) {
      for (AppendOp& op : batch) {
        results.push_back(RunAppendRequest(op, now, &tally, &storage));
        if (!storage.ok()) {
          failed_at = results.size() - 1;
          break;
        }
      }
    }
    if (storage.ok() && tally.last_sequence != last_sequence_) storage = db_->SetLastSequence(tally.last_sequence);
    if (storage.ok()) storage = db_->Commit();

    if (!storage.ok()) {
      db_->Rollback();
      storage = storage.WithContext("append");
      WS_LOG_WARN(kComponent, "append transaction failed; nothing of it was stored",
                  {{"requests", std::to_string(batch.size())}, {"error", storage.ToString()}});
      std::vector<Result<std::vector<AppendOutcome>>> failed;
      failed.reserve(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        // A request that was refused on its own keeps its precise reason.
        const bool own_rejection = i < results.size() && i != failed_at && !results[i].ok();
        failed.push_back(own_rejection ? std::move(results[i]) : Result<std::vector<AppendOutcome>>(storage));
      }
      results = std::move(failed);
    } else {
      last_sequence_ = tally.last_sequence;
      store_bytes_ += tally.total_bytes;
      std::lock_guard<std::mutex> lock(stats_mu_);
      for (size_t p = 0; p < kPriorityCount; ++p) {
        ClassBacklog& b = stats_.backlog[p];
        if (tally.count[p] > 0 && b.count == 0) b.oldest_accepted_us = now;
        b.count += tally.count[p];
        b.bytes += tally.bytes[p];
      }
      stats_.last_sequence = last_sequence_;
      if (tally.new_events > 0) {
        ++stats_.commits;
        stats_.appended_events += tally.new_events;
      }
    }

    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].done) batch[i].done(std::move(results[i]));
    }
    if (storage.ok() && tally.new_events > 0) NotifyListener();
  }

  // One Append call inside the batch transaction, under its own savepoint.
  // Sets *storage when the transaction as a whole can no longer commit.
  Result<std::vector<AppendOutcome>> RunAppendRequest(const AppendOp& op, int64_t now, BatchTally* tally,
                                                      Status* storage) {
    if (op.entries.empty()) return std::vector<AppendOutcome>{};
    if (Status s = db_->Savepoint(); !s.ok()) {
      *storage = s;
      return s;
    }
    BatchTally mine = *tally;
    std::vector<AppendOutcome> outcomes;
    outcomes.reserve(op.entries.size());
    bool rejected = false;
    Status s = AppendEntries(op.entries, now, &mine, &outcomes, &rejected);
    if (s.ok()) {
      if (Status r = db_->ReleaseSavepoint(); !r.ok()) {
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
    Status undo = db_->RollbackToSavepoint();
    if (undo.ok()) undo = db_->ReleaseSavepoint();
    if (!undo.ok()) *storage = undo;
    return s;
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
      std::string record = EncodeEventRecord(e.event);
      WS_ASSIGN_OR_RETURN(std::optional<sqlite::StoredId> found, db_->FindId(e.event.id));
      if (found.has_value()) {
        if (found->record == record) {
          outcomes->push_back(AppendOutcome{found->sequence, e.event.id, true});
          continue;
        }
        *rejected = true;
        return AlreadyExists("event id \"" + e.event.id + "\" is already stored (sequence " +
                             std::to_string(found->sequence) + ") with different content");
      }
      const uint64_t bytes = StoredBytes(e, record);
      const uint64_t in_use = store_bytes_ + tally->total_bytes;
      if (bytes > options_.max_bytes || in_use > options_.max_bytes - bytes) {
        *rejected = true;
        {
          std::lock_guard<std::mutex> lock(stats_mu_);
          stats_.rejected_full += entries.size();
        }
        return ResourceExhausted("outbox full: event \"" + e.event.id + "\" needs " + std::to_string(bytes) +
                                 " bytes, " + std::to_string(in_use) + " of max_bytes " +
                                 std::to_string(options_.max_bytes) + " are in use");
      }
      const int64_t seq = tally->last_sequence + 1;
      WS_TRY(db_->InsertEvent(sqlite::NewEventRow{seq, e.event.id, e.priority, e.stream, e.topic, now,
                                                  e.expires_at_us, bytes, record}));
      tally->last_sequence = seq;
      tally->total_bytes += bytes;
      tally->new_events += 1;
      tally->count[p] += 1;
      tally->bytes[p] += bytes;
      outcomes->push_back(AppendOutcome{seq, e.event.id, false});
    }
    return Status::Ok();
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

  void RunAcks(std::vector<AckOp>& acks) {
    size_t wanted = 0;
    for (const AckOp& a : acks) wanted += a.sequences.size();
    Status s;
    int64_t removed = 0;
    if (wanted > 0) {
      const bool retain = options_.retain_delivered_s > 0;
      const int64_t now = clock_->WallMicros();
      s = Transact([&]() -> Status {
        for (const AckOp& a : acks) {
          for (int64_t seq : a.sequences) {
            WS_ASSIGN_OR_RETURN(bool was_there, db_->RemoveDelivered(seq, retain, now));
            if (was_there) ++removed;
          }
        }
        return Status::Ok();
      });
      if (s.ok()) {
        {
          std::lock_guard<std::mutex> lock(stats_mu_);
          stats_.removed_delivered += static_cast<uint64_t>(removed);
        }
        RefreshTotals();
      } else {
        s = s.WithContext("ack");
        WS_LOG_WARN(kComponent, "ack transaction failed; the events stay in the outbox", {{"error", s.ToString()}});
      }
    }
    for (AckOp& a : acks) {
      if (a.done) a.done(s);
    }
  }

  void RunLease(LeaseOp& op) {
    const int64_t now = clock_->WallMicros();
    SweepExpired(now);
    PurgeDelivered(now);

    std::vector<LeasedEvent> out;
    std::vector<std::pair<int64_t, Status>> unreadable;
    // Cursors move only when the whole lease succeeded.
    std::array<int64_t, kPriorityCount> cursor = cursor_;
    for (Priority p : kAllPriorities) {
      if (out.size() >= op.max_events) break;
      const auto i = static_cast<size_t>(p);
      Status s = db_->ReadLeasable(p, cursor[i], now, op.max_events - out.size(), &out, &unreadable, &cursor[i]);
      if (!s.ok()) {
        if (op.done) op.done(s.WithContext("lease"));
        return;
      }
    }
    cursor_ = cursor;
    // A record that passed the integrity check but cannot be decoded will
    // never be deliverable; parking it keeps it for inspection and stops it
    // from blocking its class.
    for (const auto& [seq, why] : unreadable) {
      WS_LOG_ERROR(kComponent, "stored event cannot be decoded; dead-lettering it",
                   {{"sequence", std::to_string(seq)}, {"error", why.ToString()}});
      DeadLetterOp dead{seq, "record unreadable: " + why.message(), nullptr};
      RunDeadLetter(dead);
    }
    if (op.done) op.done(std::move(out));
  }

  void RunResetLeases() {
    // Every event leased but not acked since the last reset had one delivery
    // attempt that did not finish; remember that before forgetting leases.
    bool any = false;
    for (int64_t c : cursor_) any = any || c > 0;
    if (any) {
      Status s = Transact([&]() -> Status {
        for (Priority p : kAllPriorities) {
          const int64_t c = cursor_[static_cast<size_t>(p)];
          if (c > 0) WS_TRY(db_->AddAttempt(p, c));
        }
        return Status::Ok();
      });
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, "could not count delivery attempts", {{"error", s.ToString()}});
      }
    }
    cursor_.fill(0);
  }

  void RunDeadLetter(DeadLetterOp& op) {
    bool found = false;
    Status s = Transact([&]() -> Status {
      WS_ASSIGN_OR_RETURN(found, db_->MoveToDeadLetters(op.sequence, op.reason, clock_->WallMicros()));
      return Status::Ok();
    });
    if (s.ok() && !found) {
      s = NotFound("no event with sequence " + std::to_string(op.sequence) + " in the outbox");
    } else if (s.ok()) {
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.removed_dead_lettered;
      }
      RefreshTotals();
      WS_LOG_WARN(kComponent, "event dead-lettered",
                  {{"sequence", std::to_string(op.sequence)}, {"reason", op.reason}});
    } else {
      s = s.WithContext("dead-letter");
    }
    if (op.done) op.done(s);
  }

  void RunMaintenance() {
    const int64_t now = clock_->WallMicros();
    SweepExpired(now);
    PurgeDelivered(now);
  }

  // Best effort: a failure is logged and retried at the next Lease or idle
  // tick; leasing skips expired events either way.
  void SweepExpired(int64_t now) {
    Result<bool> any = db_->AnyExpired(now);
    if (!any.ok()) {
      WS_LOG_WARN(kComponent, "expiry check failed", {{"error", any.status().ToString()}});
      return;
    }
    if (!*any) return;
    int64_t total = 0;
    for (;;) {
      int64_t n = 0;
      Status s = Transact([&]() -> Status {
        WS_ASSIGN_OR_RETURN(n, db_->DeleteExpired(now, kSweepChunk));
        return Status::Ok();
      });
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, "removing expired events failed", {{"error", s.ToString()}});
        break;
      }
      total += n;
      if (n < kSweepChunk) break;
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
    const int64_t cutoff = now - options_.retain_delivered_s * 1'000'000;
    Result<bool> any = db_->AnyDeliveredUpTo(cutoff);
    if (!any.ok()) {
      WS_LOG_WARN(kComponent, "retention check failed", {{"error", any.status().ToString()}});
      return;
    }
    if (!*any) return;
    for (;;) {
      int64_t n = 0;
      Status s = Transact([&]() -> Status {
        WS_ASSIGN_OR_RETURN(n, db_->PurgeDeliveredUpTo(cutoff, kSweepChunk));
        return Status::Ok();
      });
      if (!s.ok()) {
        WS_LOG_WARN(kComponent, "removing delivered events past retention failed", {{"error", s.ToString()}});
        return;
      }
      if (n < kSweepChunk) return;
    }
  }

  // After removals: the totals table is exact and tiny, so reading it back
  // is simpler and safer than mirroring every trigger in memory.
  void RefreshTotals() {
    Result<sqlite::StoreTotals> t = db_->ReadTotals();
    if (!t.ok()) {
      WS_LOG_WARN(kComponent, "reading store totals failed", {{"error", t.status().ToString()}});
      return;
    }
    ApplyTotals(*t);
  }

  void ApplyTotals(const sqlite::StoreTotals& t) {
    uint64_t bytes = t.dlq_bytes;
    for (const ClassBacklog& b : t.backlog) bytes += b.bytes;
    store_bytes_ = bytes;
    std::lock_guard<std::mutex> lock(stats_mu_);
    for (size_t p = 0; p < kPriorityCount; ++p) stats_.backlog[p] = t.backlog[p];
    stats_.dlq_count = t.dlq_count;
  }

  const SqliteOutboxOptions options_;
  Clock* const clock_;

  // Committer thread only (and the constructor, before the thread starts).
  std::unique_ptr<sqlite::OutboxDb> db_;
  int64_t last_sequence_ = 0;
  uint64_t store_bytes_ = 0;  // backlog + dead letters, as counted against max_bytes
  std::array<int64_t, kPriorityCount> cursor_{};  // last leased sequence per class

  // The queue and the listener.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  bool stopping_ = false;
  std::shared_ptr<const std::function<void()>> listener_;

  mutable std::mutex stats_mu_;
  OutboxStats stats_;

  std::thread thread_;  // last: it starts after everything above exists
};

Result<std::unique_ptr<SqliteOutbox>> SqliteOutbox::Open(SqliteOutboxOptions options) {
  if (options.path.empty()) return InvalidArgument("storage path must not be empty");
  if (options.max_batch_events == 0) return InvalidArgument("max_batch_events must be at least 1");
  if (options.cache_kib <= 0) return InvalidArgument("cache_kib must be positive");
  if (options.commit_window_us < 0) return InvalidArgument("commit_window_us must not be negative");
  if (options.retain_delivered_s < 0) return InvalidArgument("retain_delivered_s must not be negative");
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
  const sqlite::OutboxDbOptions db_options{options.path, options.vfs, options.cache_kib};
  sqlite::OpenReport report;
  Result<std::unique_ptr<sqlite::OutboxDb>> db = sqlite::OutboxDb::Open(db_options, &report);
  bool quarantined = false;
  if (!db.ok() && db.status().code() == StatusCode::kDataLoss) {
    // The node must keep collecting events: keep the evidence, start afresh.
    WS_LOG_ERROR(kComponent, "the outbox file is damaged; moving it aside and starting a fresh store",
                 {{"path", options.path}, {"error", db.status().ToString()}});
    WS_ASSIGN_OR_RETURN(std::string moved_to, Quarantine(options.path, *clock));
    WS_LOG_ERROR(kComponent, "damaged outbox quarantined", {{"path", options.path}, {"moved_to", moved_to}});
    quarantined = true;
    report = sqlite::OpenReport{};
    db = sqlite::OutboxDb::Open(db_options, &report);
  }
  if (!db.ok()) return db.status().WithContext("open outbox " + options.path);

  uint64_t backlog = 0;
  for (const ClassBacklog& b : report.totals.backlog) backlog += b.count;
  const int64_t elapsed_us = (SystemClock().MonotonicNanos() - started_ns) / 1000;
  WS_LOG_INFO(kComponent, "outbox opened",
              {{"path", options.path},
               {"open_ms", std::to_string(static_cast<double>(elapsed_us) / 1000.0)},
               {"quick_check_ms", std::to_string(static_cast<double>(report.quick_check_us) / 1000.0)},
               {"backlog", std::to_string(backlog)},
               {"dlq", std::to_string(report.totals.dlq_count)},
               {"last_sequence", std::to_string(report.last_sequence)},
               {"schema_found", std::to_string(report.schema_version_found)},
               {"sqlite", LibraryVersion()}});

  auto impl = std::make_unique<Impl>(std::move(options), clock, std::move(db).value(), report, quarantined);
  impl->Start();
  // The constructor is private, so make_unique cannot reach it; the pointer
  // is owned the moment it exists.
  return std::unique_ptr<SqliteOutbox>(new SqliteOutbox(std::move(impl)));
}

SqliteOutbox::SqliteOutbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// Shuts down in the destructor's body, while the object is still whole: a
// callback that runs during the drain may still call this outbox.
SqliteOutbox::~SqliteOutbox() { impl_->Shutdown(); }

void SqliteOutbox::Append(std::vector<OutboxEntry> entries, AppendDone done) {
  AppendOp op{std::move(entries), std::move(done)};
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

void SqliteOutbox::SetAppendListener(std::function<void()> listener) { impl_->SetListener(std::move(listener)); }

OutboxStats SqliteOutbox::Stats() const { return impl_->Stats(); }

std::string SqliteOutbox::LibraryVersion() { return sqlite3_libversion(); }

}  // namespace ws
