// Idempotency-Key support for the local API's POSTs (DESIGN.md §4): the
// first successful answer to a (scope, key) pair is remembered, so a retry
// of the same request gets the same answer instead of a second append.
//
// A request is identified by a caller-computed fingerprint (a hash of what
// makes it that request). Only answers the caller decides to Finish are
// remembered; Abandon frees the key so a failed request can be retried.
// Entries expire `ttl_s` after they were begun; the cache holds at most
// `max_keys` keys and about `max_bytes` of remembered answers, evicting the
// oldest first. State is in memory only: after a restart a retry is appended
// again (the outbox's duplicate-id rule still catches it when the producer
// set the event id).
//
// Threads: not thread-safe. The local API uses it on the loop thread only.
// The Clock must outlive the cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>

#include "platform/clock.h"

namespace ws {

struct RememberedAnswer {
  int status = 0;
  std::string content_type;
  std::string body;
};

struct IdempotencyOptions {
  int64_t ttl_s = 86400;
  size_t max_keys = 100000;
  size_t max_bytes = size_t{32} * 1024 * 1024;
  // A request still unanswered after this long is taken as lost (its
  // answer can no longer arrive), so the key is usable again.
  int64_t in_flight_timeout_s = 120;
};

class IdempotencyCache {
 public:
  IdempotencyCache(const Clock& clock, IdempotencyOptions options);

  enum class Outcome {
    kStarted,   // first use (or the earlier use failed or expired): go ahead, then Finish or Abandon
    kReplay,    // answered before with the same request: `answer` is that answer
    kInFlight,  // the first request with this key has not been answered yet
    kReused,    // the key was used for a different request
  };
  struct Claim {
    Outcome outcome = Outcome::kStarted;
    uint64_t ticket = 0;      // kStarted: pass to Finish / Abandon
    RememberedAnswer answer;  // kReplay
  };

  Claim Begin(std::string_view scope, std::string_view key, std::string_view fingerprint);

  // Remembers the answer of the request that got `ticket`. A no-op if that
  // entry has since expired or been evicted.
  void Finish(std::string_view scope, std::string_view key, uint64_t ticket, RememberedAnswer answer);

  // Forgets the key of the request that got `ticket` (it failed; a retry
  // should run again).
  void Abandon(std::string_view scope, std::string_view key, uint64_t ticket);

  size_t size() const { return index_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::string slot;  // scope and key, unambiguously joined
    std::string fingerprint;
    int64_t begun_ns = 0;
    uint64_t ticket = 0;
    bool answered = false;
    RememberedAnswer answer;
    size_t bytes = 0;
  };
  using List = std::list<Entry>;

  static std::string Slot(std::string_view scope, std::string_view key);
  static size_t BytesOf(const Entry& e);
  void ExpireOld(int64_t now_ns);
  void Erase(List::iterator it);
  List::iterator Find(std::string_view scope, std::string_view key, uint64_t ticket);

  const Clock& clock_;
  IdempotencyOptions options_;
  List entries_;  // oldest first (begun_ns never decreases along the list)
  std::unordered_map<std::string, List::iterator> index_;
  size_t bytes_ = 0;
  uint64_t next_ticket_ = 1;
};

}  // namespace ws
