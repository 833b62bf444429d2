// Per-producer rate limits for the local API (DESIGN.md §4), and the
// backbone link's upload cap (bytes per second): a token bucket
// that refills at `rate_per_s` up to `burst` and starts full. The API admits
// a request when one token is there and charges the rest of a batch after
// parsing it, so the limit is in events per second while the check itself
// runs before any body is parsed.
//
// Threads: not thread-safe. The local API keeps its buckets on the loop
// thread. The Clock must outlive the bucket.
#pragma once

#include <cstdint>

#include "platform/clock.h"

namespace ws {

class TokenBucket {
 public:
  // rate_per_s == 0 makes the bucket unlimited. burst == 0 means "one
  // second's worth" (and at least one token), so a rate alone is a valid
  // setting.
  TokenBucket(const Clock& clock, double rate_per_s, double burst);

  struct Decision {
    bool allowed = true;
    // When refused: whole seconds until a token is there (rounded up, >= 1),
    // for the Retry-After header; and the same in milliseconds (>= 1).
    int64_t retry_after_s = 0;
    int64_t retry_after_ms = 0;
  };

  // Takes one token if at least one is there.
  Decision TryAcquire();

  // Takes `tokens` more without asking (the rest of an admitted batch). The
  // bucket may go below zero; later requests then wait until it has refilled
  // past one token again, which keeps the long-run rate at rate_per_s.
  void Charge(double tokens);

  bool unlimited() const { return rate_per_s_ <= 0; }
  double rate_per_s() const { return rate_per_s_; }
  double burst() const { return burst_; }
  // Tokens there now (after refilling); for tests and diagnostics.
  double Available();

 private:
  void Refill();

  const Clock& clock_;
  double rate_per_s_;
  double burst_;
  double tokens_;
  int64_t last_ns_;
};

}  // namespace ws
