// Time sources. Code that makes time-based decisions (TTL, backoff, batching
// deadlines, rate limits) takes a Clock& so tests can move time by hand with
// FakeClock. All methods are safe to call from any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace ws {

class Clock {
 public:
  virtual ~Clock() = default;
  // Nanoseconds on a steady clock with an arbitrary origin; never goes back.
  virtual int64_t MonotonicNanos() const = 0;
  // Microseconds since the Unix epoch (UTC); may jump when the time is set.
  virtual int64_t WallMicros() const = 0;

  int64_t MonotonicMillis() const { return MonotonicNanos() / 1'000'000; }
};

// The process-wide real clock (CLOCK_MONOTONIC / CLOCK_REALTIME).
Clock& SystemClock();

// A clock that only moves when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t wall_micros = 1'700'000'000'000'000) : wall_us_(wall_micros) {}
  int64_t MonotonicNanos() const override { return mono_ns_.load(std::memory_order_relaxed); }
  int64_t WallMicros() const override { return wall_us_.load(std::memory_order_relaxed); }

  // Moves both clocks forward.
  void AdvanceNanos(int64_t ns) {
    mono_ns_.fetch_add(ns, std::memory_order_relaxed);
    wall_us_.fetch_add(ns / 1000, std::memory_order_relaxed);
  }
  void AdvanceMillis(int64_t ms) { AdvanceNanos(ms * 1'000'000); }
  // Sets the wall clock only (a time change by NTP or an operator).
  void SetWallMicros(int64_t us) { wall_us_.store(us, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> mono_ns_{1'000'000'000};
  std::atomic<int64_t> wall_us_;
};

// Formats a wall time as RFC 3339 UTC with microseconds: 2026-11-21T10:00:00.000000Z.
// Threads: any.
void FormatRfc3339(int64_t wall_micros, char (&out)[48]);

}  // namespace ws
