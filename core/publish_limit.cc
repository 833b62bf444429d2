#include "core/publish_limit.h"

#include <algorithm>

namespace ws {

void PublishLimit::Reset(uint32_t ceiling) {
  ceiling_ = std::max<uint32_t>(ceiling, 1);
  limit_ = std::min(kStart, ceiling_);
  doubling_ = true;
  shortest_us_ = -1;
  round_acks_ = 0;
  round_sum_us_ = 0;
}

void PublishLimit::OnAck(int64_t round_trip_us) {
  // A clock step cannot make a round trip negative on the monotonic clock;
  // guard anyway, and count a zero as one microsecond.
  const int64_t rtt = std::max<int64_t>(round_trip_us, 1);
  if (shortest_us_ < 0 || rtt < shortest_us_) shortest_us_ = rtt;
  ++round_acks_;
  round_sum_us_ += rtt;
  if (round_acks_ >= limit_) EndRound();
}

void PublishLimit::EndRound() {
  const double average = static_cast<double>(round_sum_us_) / static_cast<double>(round_acks_);
  const double queued = static_cast<double>(limit_) * (1.0 - static_cast<double>(shortest_us_) / average);
  round_acks_ = 0;
  round_sum_us_ = 0;
  const double acks_per_s = static_cast<double>(limit_) * 1e6 / average;
  if (queued < static_cast<double>(kQueuedLow) || acks_per_s < kBusyAcksPerS) {
    const uint32_t step = doubling_ ? limit_ : std::max<uint32_t>(limit_ / 8, 1);
    limit_ = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{limit_} + step, ceiling_));
  } else if (queued > static_cast<double>(kQueuedHigh)) {
    doubling_ = false;
    limit_ = std::max<uint32_t>(limit_ - std::max<uint32_t>(limit_ / 8, 1), 1);
  }
}

}  // namespace ws
