#include "core/wall_clock_watch.h"

#include <gtest/gtest.h>

namespace ws {
namespace {

constexpr int64_t kWall = int64_t{1'800'000'000} * 1'000'000;
constexpr int64_t kSecond = 1'000'000;

TEST(WallClockWatch, TheFirstReadingIsOnlyAReference) {
  WallClockWatch w;
  EXPECT_EQ(w.Observe(kWall, 5), 0);
  EXPECT_EQ(w.Observe(kWall + 10 * kSecond, 5 + 10 * kSecond), 0);
}

TEST(WallClockWatch, AClockThatRunsOrDriftsALittleIsNoStep) {
  WallClockWatch w(2 * kSecond);
  ASSERT_EQ(w.Observe(kWall, 0), 0);
  // An hour with the wall clock 1.5 s ahead of the steady clock: a slew.
  EXPECT_EQ(w.Observe(kWall + 3600 * kSecond + 1'500'000, 3600 * kSecond), 0);
  // The drift is measured from the last reading, not from the first.
  EXPECT_EQ(w.Observe(kWall + 7200 * kSecond + 3'000'000, 7200 * kSecond), 0);
}

TEST(WallClockWatch, ASetClockReportsHowFarItWasStepped) {
  WallClockWatch w(2 * kSecond);
  const int64_t boot = 60 * kSecond;  // 1970, a minute after boot
  ASSERT_EQ(w.Observe(boot, boot), 0);
  // One second later NTP sets the clock to the real time.
  EXPECT_EQ(w.Observe(kWall, boot + kSecond), kWall - boot - kSecond);
  // From then on it runs again.
  EXPECT_EQ(w.Observe(kWall + kSecond, boot + 2 * kSecond), 0);
  // Set back by a day.
  EXPECT_EQ(w.Observe(kWall + kSecond - 86400 * kSecond, boot + 2 * kSecond), -86400 * kSecond);
  // Exactly the threshold is still no step; just above it is.
  WallClockWatch t(2 * kSecond);
  ASSERT_EQ(t.Observe(kWall, 0), 0);
  EXPECT_EQ(t.Observe(kWall + 2 * kSecond, 0), 0);
  EXPECT_EQ(t.Observe(kWall + 4 * kSecond + 1, 0), 2 * kSecond + 1);
}

}  // namespace
}  // namespace ws
