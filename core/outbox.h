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
  Event event;
  std::string topic;        // backbone topic, fully expanded
  std::string stream;       // ordering key: events of one stream leave in acknowledgement order
  Priority priority = Priority::kNormal;
  int64_t expires_at_us = 0;  // wall clock; 0 = never
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
  int64_t accepted_at_us = 0;  // wall clock at commit
  Event event;
};

struct ClassBacklog {
  uint64_t count = 0;
  uint64_t bytes = 0;
  int64_t oldest_accepted_us = 0;  // 0 when empty
};

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
  bool quarantined_at_start = false;  // a corrupt file was moved aside at open
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

  // Called on the store's thread after every commit that added events. Set
  // it before traffic starts.
  virtual void SetAppendListener(std::function<void()> listener) = 0;

  // A cheap snapshot; any thread.
  virtual OutboxStats Stats() const = 0;
};

}  // namespace ws
