// The outbox contract: what the local API appends and the backbone link
// drains. The SQLite adapter implements it; core/ and the other adapters see
// only this interface.
//
// Threads: every method may be called from any thread. Operations are queued
// to the store's own thread and run in the order they were called; each
// completion callback runs on the store's thread, so a caller that lives on
// an event loop hands the result back with EventLoop::Post. A callback must
// not block.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/event.h"
#include "core/priority.h"
#include "platform/status.h"

namespace ws {

// An event on its way in, with the routing decided.
struct OutboxEntry {
  // The event; with `record` set, only its id is read.
  Event event;
  // EncodeEventRecord(event), when the caller has encoded it: the store
  // keeps these bytes as they are. Encoding where the event was parsed lets
  // the parsed event go before the entry waits for its commit (a parsed
  // event takes about twice the memory), and takes the work off the
  // store's committer.
  std::string record;
  std::string topic;        // backbone topic, fully expanded
  std::string stream;       // ordering key: events of one stream leave in acknowledgement order
  Priority priority = Priority::kNormal;
  // Time to live from the moment the store accepts the event (its commit's
  // time): counted there, so that a wall clock set between this entry being
  // made and stored cannot shorten it. 0 = never expires.
  int64_t ttl_us = 0;
};

// The answer for one appended event.
struct AppendOutcome {
  int64_t sequence = 0;    // per-node monotonic, assigned at commit
  std::string id;          // the event id
  bool duplicate = false;  // same id and content was already stored: this is the first answer again
};

// An event handed to the backbone link.
struct LeasedEvent {
  int64_t sequence = 0;
  std::string topic;
  std::string stream;
  Priority priority = Priority::kNormal;
  int32_t attempts = 0;
  int64_t accepted_at_us = 0;  // wall clock at commit (of the retry or replay for those)
  int64_t replay_of = 0;       // Replay: the delivered sequence this sends again; 0 = an original
  std::string id;
  // The event as stored (EncodeEventRecord), checked readable when it was
  // leased; DecodeEventRecord(record, id) gives it back. Left encoded, so
  // the store's thread does not build (and the link's thread free) a
  // string per attribute: the link decodes each into one reused Event.
  std::string record;
};

struct ClassBacklog {
  uint64_t count = 0;
  uint64_t bytes = 0;
  int64_t oldest_accepted_us = 0;  // 0 when empty
};

// A dead-lettered event as the operator sees it (the record stays in the
// store; Retry brings it back).
struct DeadLetter {
  int64_t sequence = 0;  // the sequence it had in the outbox
  std::string id;
  std::string type;
  std::string topic;
  Priority priority = Priority::kNormal;
  std::string reason;
  int64_t accepted_at_us = 0;       // wall clock
  int64_t dead_lettered_at_us = 0;  // wall clock
  int32_t attempts = 0;
};

// Which retained delivered events a Replay re-sends: those whose sequence is
// in [from_sequence, to_sequence] or whose accepted time is in
// [from_us, to_us]. A bound of 0 is open. A criterion with both bounds 0 is
// not used; with neither criterion used, every retained event is selected.
struct ReplayRange {
  int64_t from_sequence = 0;
  int64_t to_sequence = 0;
  int64_t from_us = 0;  // wall clock
  int64_t to_us = 0;
};

// Append-to-commit latency buckets (upper bounds, microseconds); the last
// bucket of OutboxStats::ack_latency_buckets is +Inf.
inline constexpr int64_t kAckLatencyBoundsUs[] = {250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};
inline constexpr size_t kAckLatencyBucketCount = sizeof(kAckLatencyBoundsUs) / sizeof(kAckLatencyBoundsUs[0]) + 1;

struct OutboxStats {
  ClassBacklog backlog[4];  // indexed by Priority
  uint64_t dlq_count = 0;
  int64_t last_sequence = 0;
  uint64_t commits = 0;          // append transactions committed
  uint64_t appended_events = 0;  // events in those transactions
  uint64_t removed_delivered = 0;
  uint64_t removed_expired = 0;
  uint64_t removed_dropped_overflow = 0;
  uint64_t removed_dead_lettered = 0;
  uint64_t removed_purged = 0;
  uint64_t rejected_full = 0;
  uint64_t replayed = 0;             // delivered events re-enqueued by Replay
  uint64_t dead_letters_retried = 0;  // dead letters moved back by RetryDeadLetter
  uint64_t nacked = 0;               // events made leasable again by Nack
  // Checkpoints that copied WAL frames into the database file: on the
  // store's own checkpoint thread, and by the committer itself (the last
  // frames of a WAL, or all of them when that thread could not keep up).
  uint64_t checkpoints_background = 0;
  uint64_t checkpoints_committer = 0;
  // Rewrites of the file without its free pages once a backlog drained,
  // and the free bytes they gave back.
  uint64_t compactions = 0;
  uint64_t compacted_bytes = 0;
  // Append-to-commit latency, one observation per event of each successful
  // Append call: per-bucket counts (not cumulative; bounds in
  // kAckLatencyBoundsUs, last = +Inf), their sum and count.
  uint64_t ack_latency_buckets[kAckLatencyBucketCount] = {};
  uint64_t ack_latency_sum_us = 0;
  uint64_t ack_latency_count = 0;
  bool quarantined_at_start = false;  // a corrupt file was moved aside at open
  // The background check after open found damage and the file was moved
  // aside while the store ran (a fresh one took over).
  bool quarantined_while_running = false;
  // The background integrity check after open found damage that is still
  // in use (it could not be moved aside yet, or the store keeps no intake
  // log); the next start checks in full and quarantines.
  bool integrity_failed = false;
  bool integrity_check_running = false;  // that background check has not finished yet
  // Steps of the wall clock carried into the stored times (and times found
  // stamped before the clock was set), and whether such a move has not
  // finished (an alarm: nothing is removed for its age meanwhile).
  uint64_t clock_steps = 0;
  bool clock_shift_pending = false;
};

class Outbox {
 public:
  using AppendDone = std::function<void(Result<std::vector<AppendOutcome>>)>;
  using LeaseDone = std::function<void(Result<std::vector<LeasedEvent>>)>;
  using StatusDone = std::function<void(Status)>;

  virtual ~Outbox() = default;

  // Stores all entries in one durable transaction, or none of them. `done`
  // runs only after that transaction's commit returned (fsync'd), with one
  // outcome per entry in order. An event id already stored with the same
  // content answers with the first sequence (duplicate=true); with different
  // content the whole call fails with kAlreadyExists. A full store fails
  // with kResourceExhausted.
  virtual void Append(std::vector<OutboxEntry> entries, AppendDone done) = 0;

  // Up to `max_events` events not yet leased since the last ResetLeases, in
  // (priority, sequence) order.
  virtual void Lease(size_t max_events, LeaseDone done) = 0;

  // The backbone acknowledged these: remove them (or keep them for replay
  // when delivered-retention is configured). Unknown sequences are ignored.
  virtual void Ack(std::vector<int64_t> sequences, StatusDone done) = 0;

  // Forget every lease: the next Lease starts again at the oldest
  // undelivered event (used after the link reconnects).
  virtual void ResetLeases() = 0;

  // Never deliverable: move to the dead-letter queue with `reason`.
  virtual void DeadLetter(int64_t sequence, std::string reason, StatusDone done) = 0;

  // The link could not deliver these (a transient failure): count an
  // attempt for each and make it leasable again `retry_in_us` after the
  // store takes the call (a duration, so that a wall clock set meanwhile
  // cannot stretch it). Unknown sequences are ignored.
  virtual void Nack(std::vector<int64_t> sequences, int64_t retry_in_us, StatusDone done) = 0;

  // Dead letters, oldest first, with a sequence above `after_sequence`, at
  // most `limit`.
  // (Qualified: inside this class `DeadLetter` names the method above.)
  virtual void ListDeadLetters(int64_t after_sequence, size_t limit,
                               std::function<void(Result<std::vector<ws::DeadLetter>>)> done) = 0;

  // Moves one dead letter (by sequence, or by event id when sequence == 0)
  // back to the outbox under a NEW sequence, so it is sent after what is
  // queued; attempts start again at 0. kNotFound if there is none,
  // kResourceExhausted if its class is full (it stays a dead letter).
  virtual void RetryDeadLetter(int64_t sequence, std::string id, std::function<void(Result<AppendOutcome>)> done) = 0;

  // Deletes one dead letter (by sequence, or by id when sequence == 0), or
  // all of them when sequence == 0 and id is empty; counted removed_purged.
  // Answers how many were deleted (kNotFound when one was named and absent).
  virtual void PurgeDeadLetters(int64_t sequence, std::string id, std::function<void(Result<uint64_t>)> done) = 0;

  // Re-enqueues retained delivered events (only kept while delivered
  // retention is configured) selected by `range` as new outbox entries: new
  // sequences, same ids; ids still queued are skipped. Answers how many.
  // All or nothing: kInvalidArgument for a bad range, kResourceExhausted
  // when the class limits refuse one, kFailedPrecondition without
  // retention.
  virtual void Replay(const ReplayRange& range, std::function<void(Result<uint64_t>)> done) = 0;

  // Called on the store's thread after every commit that added events. Set
  // it before traffic starts.
  virtual void SetAppendListener(std::function<void()> listener) = 0;

  // A cheap snapshot; any thread.
  virtual OutboxStats Stats() const = 0;
};

}  // namespace ws
