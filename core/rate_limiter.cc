#include "core/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace ws {

TokenBucket::TokenBucket(const Clock& clock, double rate_per_s, double burst)
    : clock_(clock),
      rate_per_s_(rate_per_s > 0 ? rate_per_s : 0),
      burst_(burst > 0 ? burst : std::max(rate_per_s_, 1.0)),
      tokens_(burst_),
      last_ns_(clock.MonotonicNanos()) {}

void TokenBucket::Refill() {
  int64_t now = clock_.MonotonicNanos();
  if (now <= last_ns_) return;
  double elapsed_s = static_cast<double>(now - last_ns_) / 1e9;
  tokens_ = std::min(burst_, tokens_ + elapsed_s * rate_per_s_);
  last_ns_ = now;
}

TokenBucket::Decision TokenBucket::TryAcquire() {
  if (unlimited()) return {};
  Refill();
  if (tokens_ >= 1.0) {
    tokens_ -= 1.0;
    return {};
  }
  double wait_s = (1.0 - tokens_) / rate_per_s_;
  // Whole seconds, rounded up: a client that waits that long finds a token.
  auto seconds = static_cast<int64_t>(std::ceil(wait_s));
  auto millis = static_cast<int64_t>(std::ceil(wait_s * 1000));
  return {false, std::max<int64_t>(seconds, 1), std::max<int64_t>(millis, 1)};
}

void TokenBucket::Charge(double tokens) {
  if (unlimited() || tokens <= 0) return;
  Refill();
  tokens_ -= tokens;
}

double TokenBucket::Available() {
  if (unlimited()) return burst_;
  Refill();
  return tokens_;
}

}  // namespace ws
