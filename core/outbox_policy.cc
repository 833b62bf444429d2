#include "core/outbox_policy.h"

#include <limits>

namespace ws {
namespace {

std::string ClassName(Priority p) { return std::string(PriorityName(p)); }

}  // namespace

std::string_view OverflowPolicyName(OverflowPolicy p) {
  return p == OverflowPolicy::kDropOldest ? "drop_oldest" : "reject_new";
}

bool ParseOverflowPolicy(std::string_view name, OverflowPolicy* out) {
  if (name == "reject_new") {
    *out = OverflowPolicy::kRejectNew;
    return true;
  }
  if (name == "drop_oldest") {
    *out = OverflowPolicy::kDropOldest;
    return true;
  }
  return false;
}

ClassLimits DefaultClassLimits(Priority p) {
  ClassLimits l;
  l.overflow = p == Priority::kBulk ? OverflowPolicy::kDropOldest : OverflowPolicy::kRejectNew;
  return l;
}

ClassLimitsArray DefaultClassLimitsArray() {
  ClassLimitsArray a;
  for (Priority p : kAllPriorities) a[static_cast<size_t>(p)] = DefaultClassLimits(p);
  return a;
}

uint64_t StoreUsage::TotalBytes() const {
  uint64_t total = other_bytes;
  for (const ClassUsage& c : classes) total += c.bytes;
  return total;
}

uint64_t StoreCapFor(const StoreLimits& limits, Priority p) {
  if (p == Priority::kControl) return limits.max_bytes;
  return limits.max_bytes > limits.control_reserve_bytes ? limits.max_bytes - limits.control_reserve_bytes : 0;
}

AdmissionDecision DecideAdmission(const StoreLimits& limits, const StoreUsage& usage, Priority p,
                                  uint64_t event_bytes) {
  const auto i = static_cast<size_t>(p);
  const ClassLimits& cl = limits.classes[i];
  const ClassUsage& used = usage.classes[i];
  const uint64_t cap = StoreCapFor(limits, p);
  // Named only on the way to a refusal: admitting allocates nothing.
  const auto cls = [p] { return ClassName(p); };

  // Too large on its own: dropping every other event would not help, and
  // dropping some first would lose them for nothing.
  if (event_bytes > cap) {
    std::string why = "the event needs " + std::to_string(event_bytes) + " bytes, more than class " + cls() +
                      " may ever use of max_bytes " + std::to_string(limits.max_bytes);
    if (p != Priority::kControl && limits.control_reserve_bytes > 0) {
      why += " (" + std::to_string(limits.control_reserve_bytes) + " are reserved for control)";
    }
    return {Admission::kReject, std::move(why)};
  }
  if (cl.max_bytes > 0 && event_bytes > cl.max_bytes) {
    return {Admission::kReject, "the event needs " + std::to_string(event_bytes) + " bytes, more than class " + cls() +
                                    " max_bytes " + std::to_string(cl.max_bytes)};
  }

  std::string in_the_way;
  if (cl.max_count > 0 && used.count >= cl.max_count) {
    in_the_way = "class " + cls() + " is at max_count " + std::to_string(cl.max_count);
  } else if (cl.max_bytes > 0 && used.bytes > cl.max_bytes - event_bytes) {
    in_the_way = "class " + cls() + " holds " + std::to_string(used.bytes) + " of its max_bytes " +
                 std::to_string(cl.max_bytes) + " and the event needs " + std::to_string(event_bytes);
  } else {
    const uint64_t total = usage.TotalBytes();
    if (total > cap - event_bytes) {
      in_the_way = "outbox full: the event needs " + std::to_string(event_bytes) + " bytes, " + std::to_string(total) +
                   " of max_bytes " + std::to_string(limits.max_bytes) + " are in use";
      if (p != Priority::kControl && limits.control_reserve_bytes > 0) {
        in_the_way += " (" + std::to_string(limits.control_reserve_bytes) + " reserved for control)";
      }
    }
  }
  if (in_the_way.empty()) return {Admission::kAdmit, {}};
  if (cl.overflow == OverflowPolicy::kDropOldest && used.count > 0) {
    return {Admission::kDropOldest, std::move(in_the_way)};
  }
  return {Admission::kReject, std::move(in_the_way)};
}

int64_t MaxAgeCutoffUs(const ClassLimits& limits, int64_t now_us) {
  if (limits.max_age_s <= 0) return 0;
  // Saturate instead of overflowing: an age beyond the epoch expires nothing.
  constexpr int64_t kMaxSeconds = std::numeric_limits<int64_t>::max() / 1'000'000;
  if (limits.max_age_s >= kMaxSeconds || now_us <= limits.max_age_s * 1'000'000) return 0;
  return now_us - limits.max_age_s * 1'000'000;
}

Status CheckReplayRange(const ReplayRange& r) {
  if (r.from_sequence < 0 || r.to_sequence < 0) return InvalidArgument("replay sequences must not be negative");
  if (r.from_us < 0 || r.to_us < 0) return InvalidArgument("replay times must not be negative");
  if (r.from_sequence > 0 && r.to_sequence > 0 && r.from_sequence > r.to_sequence) {
    return InvalidArgument("replay range: from_sequence " + std::to_string(r.from_sequence) + " is after to_sequence " +
                           std::to_string(r.to_sequence));
  }
  if (r.from_us > 0 && r.to_us > 0 && r.from_us > r.to_us) {
    return InvalidArgument("replay range: from time " + std::to_string(r.from_us) + " is after to time " +
                           std::to_string(r.to_us));
  }
  return Status::Ok();
}

bool InReplayRange(const ReplayRange& r, int64_t sequence, int64_t accepted_us) {
  const bool by_sequence = r.from_sequence != 0 || r.to_sequence != 0;
  const bool by_time = r.from_us != 0 || r.to_us != 0;
  if (!by_sequence && !by_time) return true;
  if (by_sequence && sequence >= r.from_sequence && (r.to_sequence == 0 || sequence <= r.to_sequence)) return true;
  return by_time && accepted_us >= r.from_us && (r.to_us == 0 || accepted_us <= r.to_us);
}

size_t AckLatencyBucket(int64_t latency_us) {
  size_t i = 0;
  for (int64_t bound : kAckLatencyBoundsUs) {
    if (latency_us <= bound) return i;
    ++i;
  }
  return i;
}

void RecordAckLatency(int64_t latency_us, uint64_t events, OutboxStats* stats) {
  if (events == 0) return;
  const int64_t clamped = latency_us < 0 ? 0 : latency_us;
  stats->ack_latency_buckets[AckLatencyBucket(clamped)] += events;
  stats->ack_latency_sum_us += static_cast<uint64_t>(clamped) * events;
  stats->ack_latency_count += events;
}

}  // namespace ws
