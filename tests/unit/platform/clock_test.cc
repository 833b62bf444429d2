#include "platform/clock.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace ws {
namespace {

std::string Format(int64_t wall_micros) {
  char buf[48];
  FormatRfc3339(wall_micros, buf);
  return buf;
}

TEST(ClockTest, FakeClockAdvanceMovesBothClocks) {
  FakeClock clock(1'000'000);
  int64_t mono = clock.MonotonicNanos();
  clock.AdvanceMillis(1500);
  EXPECT_EQ(clock.MonotonicNanos() - mono, 1'500'000'000);
  EXPECT_EQ(clock.MonotonicMillis() - mono / 1'000'000, 1500);
  EXPECT_EQ(clock.WallMicros(), 1'000'000 + 1'500'000);
  clock.AdvanceNanos(2'000);
  EXPECT_EQ(clock.MonotonicNanos() - mono, 1'500'002'000);
  EXPECT_EQ(clock.WallMicros(), 2'500'002);
}

TEST(ClockTest, FakeClockSetWallLeavesMonotonicAlone) {
  FakeClock clock;
  int64_t mono = clock.MonotonicNanos();
  clock.SetWallMicros(5);
  EXPECT_EQ(clock.WallMicros(), 5);
  EXPECT_EQ(clock.MonotonicNanos(), mono);
}

TEST(ClockTest, SystemClockIsPlausible) {
  Clock& c = SystemClock();
  int64_t a = c.MonotonicNanos();
  int64_t b = c.MonotonicNanos();
  EXPECT_GE(b, a);
  // Later than 2023-11-14 (this code did not exist before then).
  EXPECT_GT(c.WallMicros(), int64_t{1'700'000'000} * 1'000'000);
}

TEST(ClockTest, FormatRfc3339Epoch) { EXPECT_EQ(Format(0), "1970-01-01T00:00:00.000000Z"); }

TEST(ClockTest, FormatRfc3339KnownInstants) {
  EXPECT_EQ(Format(int64_t{1'795'255'200} * 1'000'000), "2026-11-21T10:00:00.000000Z");
  EXPECT_EQ(Format(int64_t{1'700'000'000} * 1'000'000 + 42), "2023-11-14T22:13:20.000042Z");
}

TEST(ClockTest, FormatRfc3339LeapDays) {
  EXPECT_EQ(Format(int64_t{1'709'251'199} * 1'000'000 + 999'999), "2024-02-29T23:59:59.999999Z");
  EXPECT_EQ(Format(int64_t{1'709'251'200} * 1'000'000), "2024-03-01T00:00:00.000000Z");
  EXPECT_EQ(Format(int64_t{951'825'600} * 1'000'000 + 123'456), "2000-02-29T12:00:00.123456Z");
}

TEST(ClockTest, FormatRfc3339BeforeEpoch) {
  // Negative times must borrow a second, not print a negative fraction.
  EXPECT_EQ(Format(-1), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(Format(-1'000'000), "1969-12-31T23:59:59.000000Z");
  EXPECT_EQ(Format(-1'500'000), "1969-12-31T23:59:58.500000Z");
}

}  // namespace
}  // namespace ws
