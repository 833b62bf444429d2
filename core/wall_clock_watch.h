// Notices when the wall clock is set (stepped) rather than running.
//
// The outbox stamps events with the wall clock, because accepted times,
// TTLs and retry times must mean the same after a restart. A gateway
// without a battery-backed clock boots in 1970 (or wherever its last saved
// time was) and is set by NTP minutes later: without a correction every
// event accepted before that moment would look decades old and expire at
// once, and a clock set back would hold retries for as long as it went
// back. The store feeds each wall reading here together with the steady
// clock; a wall clock that moved more than `threshold_us` away from what
// the steady clock says elapsed was stepped, by the returned amount, and
// the store shifts the times it already holds by it.
//
// Threads: not thread-safe; the store uses one from its committer thread.
#pragma once

#include <cstdint>

namespace ws {

// Before this (2026-01-01T00:00:00Z) the wall clock is known not to be set:
// no event handled by this software was accepted earlier.
constexpr int64_t kEarliestPlausibleWallUs = int64_t{1'767'225'600} * 1'000'000;

// Steps smaller than this are left alone: NTP slews small offsets, and two
// readings of the two clocks are never taken at quite the same instant.
constexpr int64_t kDefaultClockStepThresholdUs = 2'000'000;

class WallClockWatch {
 public:
  explicit WallClockWatch(int64_t threshold_us = kDefaultClockStepThresholdUs) : threshold_us_(threshold_us) {}

  // A reading of both clocks (steady in microseconds, any origin). Returns
  // how far the wall clock was stepped since the previous reading (positive
  // forward), or 0 when it only ran (within the threshold) or on the first
  // reading. Either way this reading becomes the reference for the next.
  int64_t Observe(int64_t wall_us, int64_t steady_us);

 private:
  int64_t threshold_us_;
  bool have_reference_ = false;
  int64_t wall_ref_us_ = 0;
  int64_t steady_ref_us_ = 0;
};

}  // namespace ws
