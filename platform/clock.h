// Time sources. Code that makes time-based decisions (TTL, backoff, batching
// deadlines, rate limits) takes a Clock& so tests can move time by hand with
// FakeClock. All methods are safe to call from any thread.
#pragma once

#include <cstdint>
#include <mutex>

namespace ws {

class Clock {
 public:
  virtual ~Clock() = default;
  // Nanoseconds on a steady clock with an arbitrary origin; never goes back.
  virtual int64_t MonotonicNanos() const = 0;
  // Microseconds since the Unix epoch (UTC); may jump when the time is set.
  virtual int64_t WallMicros() const = 0;

  int64_t MonotonicMillis() const { return MonotonicNanos() / 1'000'000; }

  // Both clocks, read together: what code that compares them (a wall
  // clock that was set, see core/wall_clock_watch.h) reads.
  struct Reading {
    int64_t wall_us = 0;
    int64_t mono_ns = 0;
  };
  virtual Reading ReadBoth() const { return Reading{WallMicros(), MonotonicNanos()}; }
};

// The process-wide real clock (CLOCK_MONOTONIC / CLOCK_REALTIME).
Clock& SystemClock();

// A clock that only moves when told to. Both clocks change under one lock,
// so that ReadBoth never sees one moved and the other not.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t wall_micros = 1'700'000'000'000'000) : wall_us_(wall_micros) {}
  int64_t MonotonicNanos() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return mono_ns_;
  }
  int64_t WallMicros() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return wall_us_;
  }
  Reading ReadBoth() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return Reading{wall_us_, mono_ns_};
  }

  // Moves both clocks forward.
  void AdvanceNanos(int64_t ns) {
    std::lock_guard<std::mutex> lock(mu_);
    mono_ns_ += ns;
    wall_us_ += ns / 1000;
  }
  void AdvanceMillis(int64_t ms) { AdvanceNanos(ms * 1'000'000); }
  // Sets the wall clock only (a time change by NTP or an operator).
  void SetWallMicros(int64_t us) {
    std::lock_guard<std::mutex> lock(mu_);
    wall_us_ = us;
  }

 private:
  mutable std::mutex mu_;
  int64_t mono_ns_ = 1'000'000'000;
  int64_t wall_us_;
};

// Formats a wall time as RFC 3339 UTC with microseconds: 2026-11-21T10:00:00.000000Z.
// Threads: any.
void FormatRfc3339(int64_t wall_micros, char (&out)[48]);

}  // namespace ws
