#include "core/rate_limiter.h"

#include <gtest/gtest.h>

namespace ws {
namespace {

TEST(TokenBucket, ZeroRateIsUnlimited) {
  FakeClock clock;
  TokenBucket b(clock, 0, 0);
  EXPECT_TRUE(b.unlimited());
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(b.TryAcquire().allowed) << i;
}

TEST(TokenBucket, StartsFullThenRefusesWithRetryAfterRoundedUp) {
  FakeClock clock;
  TokenBucket b(clock, /*rate_per_s=*/2, /*burst=*/3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.TryAcquire().allowed) << i;
  TokenBucket::Decision d = b.TryAcquire();
  EXPECT_FALSE(d.allowed);
  // One token takes half a second at 2/s: Retry-After is whole seconds, so 1.
  EXPECT_EQ(d.retry_after_s, 1);
  EXPECT_EQ(d.retry_after_ms, 500);

  clock.AdvanceMillis(499);
  EXPECT_FALSE(b.TryAcquire().allowed);
  clock.AdvanceMillis(1);
  EXPECT_TRUE(b.TryAcquire().allowed);
  EXPECT_FALSE(b.TryAcquire().allowed);
}

TEST(TokenBucket, RetryAfterCoversTheWholeWaitAtSlowRates) {
  FakeClock clock;
  TokenBucket b(clock, /*rate_per_s=*/0.25, /*burst=*/1);
  EXPECT_TRUE(b.TryAcquire().allowed);
  TokenBucket::Decision d = b.TryAcquire();
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 4);
  EXPECT_EQ(d.retry_after_ms, 4000);
  clock.AdvanceMillis(1500);
  d = b.TryAcquire();
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_ms, 2500);
  EXPECT_EQ(d.retry_after_s, 3);  // 2.5 s left, rounded up
  clock.AdvanceMillis(2500);
  EXPECT_TRUE(b.TryAcquire().allowed);
}

TEST(TokenBucket, RefillStopsAtBurst) {
  FakeClock clock;
  TokenBucket b(clock, 10, 5);
  clock.AdvanceMillis(60'000);
  int allowed = 0;
  while (b.TryAcquire().allowed) ++allowed;
  EXPECT_EQ(allowed, 5);
}

TEST(TokenBucket, ZeroBurstMeansOneSecondsWorth) {
  FakeClock clock;
  TokenBucket b(clock, 4, 0);
  EXPECT_EQ(b.burst(), 4);
  TokenBucket slow(clock, 0.5, 0);
  EXPECT_EQ(slow.burst(), 1);  // never below one token, or nothing would pass
  EXPECT_TRUE(slow.TryAcquire().allowed);
  EXPECT_FALSE(slow.TryAcquire().allowed);
}

TEST(TokenBucket, ChargedBatchLeavesDebtThatLaterRequestsWaitOut) {
  FakeClock clock;
  TokenBucket b(clock, /*rate_per_s=*/10, /*burst=*/10);
  ASSERT_TRUE(b.TryAcquire().allowed);
  b.Charge(29);  // a batch of 30 events: 10 available, 20 owed
  EXPECT_EQ(b.Available(), -20);
  TokenBucket::Decision d = b.TryAcquire();
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 3);  // 21 tokens at 10/s = 2.1 s
  clock.AdvanceMillis(2000);
  EXPECT_FALSE(b.TryAcquire().allowed);
  clock.AdvanceMillis(100);
  EXPECT_TRUE(b.TryAcquire().allowed);
}

TEST(TokenBucket, ClockThatDoesNotMoveAddsNothing) {
  FakeClock clock;
  TokenBucket b(clock, 1000, 1);
  EXPECT_TRUE(b.TryAcquire().allowed);
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(b.TryAcquire().allowed);
}

}  // namespace
}  // namespace ws
