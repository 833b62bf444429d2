// The outbox's policy: per-priority-class limits (bytes, count, age), what
// happens when a class or the store is full (reject the new event, or drop
// the oldest events of the same class), the headroom only control traffic
// may use, the Replay range rules, and the append-to-commit latency
// histogram. Pure functions over plain values: the store keeps the running
// totals and runs the SQL; this unit only decides, so every rule is tested
// here without a database.
//
// Threads: no state, no I/O; callable from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/outbox.h"
#include "core/priority.h"
#include "platform/status.h"

namespace ws {

enum class OverflowPolicy : uint8_t {
  kRejectNew,   // the new event is refused (the API answers 507); nothing stored is touched
  kDropOldest,  // the oldest events of the same class are removed to make room
};

std::string_view OverflowPolicyName(OverflowPolicy p);  // "reject_new" | "drop_oldest"
// False if `name` is neither.
bool ParseOverflowPolicy(std::string_view name, OverflowPolicy* out);

// Limits of one priority class. 0 means "no limit of this kind" (the
// store-wide storage.max_bytes still applies).
struct ClassLimits {
  uint64_t max_bytes = 0;
  uint64_t max_count = 0;
  int64_t max_age_s = 0;  // events accepted longer ago than this are removed as expired
  OverflowPolicy overflow = OverflowPolicy::kRejectNew;

  bool operator==(const ClassLimits&) const = default;
};

using ClassLimitsArray = std::array<ClassLimits, kPriorityCount>;  // indexed by Priority

// No class limit; reject_new for control, high and normal; drop_oldest for
// bulk (bulk data is the first thing an operator would give up).
ClassLimits DefaultClassLimits(Priority p);
ClassLimitsArray DefaultClassLimitsArray();

struct StoreLimits {
  uint64_t max_bytes = 0;              // the whole store: backlog plus dead letters
  uint64_t control_reserve_bytes = 0;  // the top of max_bytes that only the control class may fill
  ClassLimitsArray classes = DefaultClassLimitsArray();
};

struct ClassUsage {
  uint64_t count = 0;
  uint64_t bytes = 0;
};

struct StoreUsage {
  std::array<ClassUsage, kPriorityCount> classes{};
  uint64_t other_bytes = 0;  // counted against max_bytes outside the classes (dead letters)

  uint64_t TotalBytes() const;
};

// The part of max_bytes class `p` may fill: all of it for control, all but
// the control reserve for the others.
uint64_t StoreCapFor(const StoreLimits& limits, Priority p);

enum class Admission {
  kAdmit,       // store the event
  kDropOldest,  // remove the oldest event of the class, then ask again
  kReject,      // refuse the event (kResourceExhausted)
};

struct AdmissionDecision {
  Admission action = Admission::kAdmit;
  // For kReject and kDropOldest: which limit is in the way, in words
  // ("class bulk is at max_count 1000").
  std::string reason;
};

// Given the current usage, what to do with one more event of class `p` that
// counts `event_bytes`. An event that could never fit (larger than a limit
// on its own) is rejected whatever the overflow policy, and drop_oldest
// turns into a reject once the class is empty. The caller drops one event
// per kDropOldest and asks again with the new usage; each call is O(1).
AdmissionDecision DecideAdmission(const StoreLimits& limits, const StoreUsage& usage, Priority p, uint64_t event_bytes);

// Events of a class with max_age_s accepted at or before this wall time are
// expired; 0 when the class has no age limit.
int64_t MaxAgeCutoffUs(const ClassLimits& limits, int64_t now_us);

// kInvalidArgument for negative bounds or a range whose start lies after
// its end.
Status CheckReplayRange(const ReplayRange& range);
// Whether a retained delivered event falls in `range` (see ReplayRange).
bool InReplayRange(const ReplayRange& range, int64_t sequence, int64_t accepted_us);

// The OutboxStats::ack_latency_buckets index for a latency: the first bucket
// whose bound is >= it, the last (+Inf) beyond all bounds.
size_t AckLatencyBucket(int64_t latency_us);
// Counts `events` observations of `latency_us` into the histogram.
void RecordAckLatency(int64_t latency_us, uint64_t events, OutboxStats* stats);

// How much WAL a store gathers before it is copied into the database file
// (checkpointed). A page that commits change again and again is copied
// once per checkpoint, so rarer checkpoints write less: with a backlog of
// random (UUIDv4) ids, whose index pages every commit scatters, 16 MiB
// instead of 4 wrote about 40 % fewer bytes per event (docs/benchmarks.md,
// "Event ids"). Below the minimum a checkpoint would run every few
// commits; above the maximum the WAL (up to four times as much) would
// rival the store itself.
inline constexpr int64_t kDefaultWalCheckpointBytes = int64_t{16} << 20;
inline constexpr int64_t kMinWalCheckpointBytes = int64_t{64} << 10;
inline constexpr int64_t kMaxWalCheckpointBytes = int64_t{256} << 20;

}  // namespace ws
