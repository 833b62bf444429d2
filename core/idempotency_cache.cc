#include "core/idempotency_cache.h"

#include <utility>

namespace ws {
namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;
// Per-entry bookkeeping (list node, map node, string headers), roughly.
constexpr size_t kEntryOverhead = 160;

}  // namespace

IdempotencyCache::IdempotencyCache(const Clock& clock, IdempotencyOptions options) : clock_(clock), options_(options) {
  if (options_.max_keys == 0) options_.max_keys = 1;
  // Keeps the nanosecond arithmetic far from overflow (ten years is plenty).
  constexpr int64_t kMaxSeconds = int64_t{10} * 365 * 86400;
  if (options_.ttl_s < 1) options_.ttl_s = 1;
  if (options_.ttl_s > kMaxSeconds) options_.ttl_s = kMaxSeconds;
  if (options_.in_flight_timeout_s < 1) options_.in_flight_timeout_s = 1;
  if (options_.in_flight_timeout_s > kMaxSeconds) options_.in_flight_timeout_s = kMaxSeconds;
}

std::string IdempotencyCache::Slot(std::string_view scope, std::string_view key) {
  // Length-prefixed so that ("a:", "b") and ("a", ":b") stay apart.
  std::string s = std::to_string(scope.size());
  s += ':';
  s += scope;
  s += key;
  return s;
}

size_t IdempotencyCache::BytesOf(const Entry& e) {
  return kEntryOverhead + 2 * e.slot.size() + e.fingerprint.size() + e.answer.content_type.size() +
         e.answer.body.size();
}

void IdempotencyCache::Erase(List::iterator it) {
  bytes_ -= it->bytes;
  index_.erase(it->slot);
  entries_.erase(it);
}

void IdempotencyCache::ExpireOld(int64_t now_ns) {
  const int64_t ttl_ns = options_.ttl_s * kNanosPerSecond;
  while (!entries_.empty() && now_ns - entries_.front().begun_ns >= ttl_ns) Erase(entries_.begin());
}

IdempotencyCache::Claim IdempotencyCache::Begin(std::string_view scope, std::string_view key,
                                                std::string_view fingerprint) {
  const int64_t now = clock_.MonotonicNanos();
  ExpireOld(now);
  std::string slot = Slot(scope, key);
  auto found = index_.find(slot);
  if (found != index_.end()) {
    const Entry& e = *found->second;
    bool lost = !e.answered && now - e.begun_ns >= options_.in_flight_timeout_s * kNanosPerSecond;
    if (!lost) {
      Claim c;
      if (e.fingerprint != fingerprint) {
        c.outcome = Outcome::kReused;
      } else if (!e.answered) {
        c.outcome = Outcome::kInFlight;
      } else {
        c.outcome = Outcome::kReplay;
        c.answer = e.answer;
      }
      return c;
    }
    Erase(found->second);
  }
  while (index_.size() >= options_.max_keys && !entries_.empty()) Erase(entries_.begin());

  Entry e;
  e.slot = std::move(slot);
  e.fingerprint = std::string(fingerprint);
  e.begun_ns = now;
  e.ticket = next_ticket_++;
  e.bytes = BytesOf(e);
  entries_.push_back(std::move(e));
  auto it = std::prev(entries_.end());
  index_.emplace(it->slot, it);
  bytes_ += it->bytes;
  Claim c;
  c.outcome = Outcome::kStarted;
  c.ticket = it->ticket;
  return c;
}

IdempotencyCache::List::iterator IdempotencyCache::Find(std::string_view scope, std::string_view key, uint64_t ticket) {
  auto found = index_.find(Slot(scope, key));
  if (found == index_.end() || found->second->ticket != ticket) return entries_.end();
  return found->second;
}

void IdempotencyCache::Finish(std::string_view scope, std::string_view key, uint64_t ticket, RememberedAnswer answer) {
  auto it = Find(scope, key, ticket);
  if (it == entries_.end()) return;
  bytes_ -= it->bytes;
  it->answered = true;
  it->answer = std::move(answer);
  it->bytes = BytesOf(*it);
  bytes_ += it->bytes;
  // Over the byte budget: the oldest go first (possibly this one, if its
  // answer alone is larger than the budget).
  while (bytes_ > options_.max_bytes && !entries_.empty()) Erase(entries_.begin());
}

void IdempotencyCache::Abandon(std::string_view scope, std::string_view key, uint64_t ticket) {
  auto it = Find(scope, key, ticket);
  if (it != entries_.end()) Erase(it);
}

}  // namespace ws
