#include "platform/clock.h"

#include <time.h>

#include <cstdio>

namespace ws {
namespace {

class RealClock final : public Clock {
 public:
  int64_t MonotonicNanos() const override {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);  // cannot fail with a valid clock id
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  }
  int64_t WallMicros() const override {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
  }
};

}  // namespace

Clock& SystemClock() {
  // Never destroyed: threads that outlive main (a store a test never shut
  // down) may still read it while static destructors run.
  static RealClock* const clock = new RealClock;
  return *clock;
}

void FormatRfc3339(int64_t wall_micros, char (&out)[48]) {
  int64_t secs = wall_micros / 1'000'000;
  int64_t micros = wall_micros % 1'000'000;
  if (micros < 0) {
    micros += 1'000'000;
    secs -= 1;
  }
  time_t t = static_cast<time_t>(secs);
  tm utc{};
  gmtime_r(&t, &utc);
  std::snprintf(out, sizeof out, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(micros));
}

}  // namespace ws
