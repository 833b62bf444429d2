#include "core/publish_limit.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>

namespace ws {
namespace {

// A path to a broker, simulated in whole microseconds: each PUBLISH travels
// `one_way_us`, waits for the broker, which takes `service_us` per message
// one after the other (its socket is the queue), and the PUBACK travels
// `one_way_us` back. The link keeps limit() PUBLISHes out, as the backbone
// link does while it has a backlog. Returns the average acks per second over
// the run, so a test can check what the limit cost.
struct PathResult {
  double acks_per_s = 0;
  uint32_t max_limit = 0;
  uint32_t min_limit_after_start = UINT32_MAX;
};

PathResult RunPath(PublishLimit* limit, int64_t one_way_us, int64_t service_us, int acks) {
  struct Out {
    int64_t published_us;
    int64_t acked_us;
  };
  std::deque<Out> out;  // FIFO: the broker serves in order, so acks come in order
  int64_t now = 0;
  int64_t broker_free_at = 0;
  auto publish = [&] {
    const int64_t arrives = now + one_way_us;
    broker_free_at = std::max(broker_free_at, arrives) + service_us;
    out.push_back(Out{now, broker_free_at + one_way_us});
  };
  PathResult r;
  for (int i = 0; i < acks; ++i) {
    while (out.size() < limit->limit()) publish();
    Out o = out.front();
    out.pop_front();
    now = o.acked_us;
    limit->OnAck(o.acked_us - o.published_us);
    r.max_limit = std::max(r.max_limit, limit->limit());
    if (i > acks / 2) r.min_limit_after_start = std::min(r.min_limit_after_start, limit->limit());
  }
  r.acks_per_s = now > 0 ? static_cast<double>(acks) * 1e6 / static_cast<double>(now) : 0;
  return r;
}

// `rounds` whole rounds (as many PUBACKs as the limit at each round's
// start), every round trip `round_trip_us`.
void Rounds(PublishLimit* limit, int rounds, int64_t round_trip_us) {
  for (int r = 0; r < rounds; ++r) {
    const uint32_t n = limit->limit();
    for (uint32_t i = 0; i < n; ++i) limit->OnAck(round_trip_us);
  }
}

TEST(PublishLimit, StartsAtTheStartValueWithinTheWindow) {
  PublishLimit big(512);
  EXPECT_EQ(big.limit(), PublishLimit::kStart);
  EXPECT_EQ(big.shortest_round_trip_us(), 0);
  PublishLimit small(10);
  EXPECT_EQ(small.limit(), 10u);
  PublishLimit zero(0);
  EXPECT_EQ(zero.limit(), 1u);
}

TEST(PublishLimit, AFastBrokerNextDoorGetsAboutAHundredNotTheWholeWindow) {
  // Loopback: 50 µs each way, 10 µs per message at the broker. Ten
  // PUBLISHes fill the path; anything beyond waits in the broker's socket.
  PublishLimit limit(512);
  PathResult r = RunPath(&limit, 50, 10, 200'000);
  EXPECT_GE(limit.limit(), PublishLimit::kQueuedLow);
  EXPECT_LE(limit.limit(), PublishLimit::kQueuedHigh + 10 + 32);
  EXPECT_GE(r.min_limit_after_start, PublishLimit::kQueuedLow);
  EXPECT_LT(r.max_limit, 512u);
  EXPECT_EQ(limit.shortest_round_trip_us(), 110);
  // The broker is still kept busy: within 1 % of its 100,000 messages/s.
  EXPECT_GT(r.acks_per_s, 99'000);
}

TEST(PublishLimit, ALongPathGetsTheWholeWindowWhenThePathHoldsMore) {
  // 50 ms each way, 100 µs per message: the path holds 1,000 PUBLISHes.
  PublishLimit limit(512);
  PathResult r = RunPath(&limit, 50'000, 100, 20'000);
  EXPECT_EQ(limit.limit(), 512u);
  // The window gives 512 per round trip of 100.1 ms, 5,115/s; the first
  // four rounds (64, 128, 256 and then 512 out) cost about 8 % of this run.
  EXPECT_GT(r.acks_per_s, 4'600);
}

TEST(PublishLimit, ALongFastPathGetsWhatItHoldsPlusASmallQueueUnderALargeWindow) {
  // 25 ms each way, 50 µs per message: the path holds 1,000 PUBLISHes and
  // PUBACKs come at 20,000/s.
  PublishLimit limit(4000);
  PathResult r = RunPath(&limit, 25'000, 50, 200'000);
  // 1,000 on the way, and between kQueuedLow and kQueuedHigh (plus one step
  // of 1/8) waiting at the broker.
  EXPECT_GE(limit.limit(), 1000 + PublishLimit::kQueuedLow - 1000 / 8);
  EXPECT_LE(limit.limit(), 1000 + PublishLimit::kQueuedHigh + 1200 / 8);
  EXPECT_LT(r.max_limit, 4000u);
  EXPECT_GT(r.acks_per_s, 19'000);  // the broker's 20,000/s, nearly
}

TEST(PublishLimit, ASlowPathKeepsTheWholeWindowEvenWithAQueue) {
  // A modem that sends 500 messages/s (2 ms each) over a 20 ms path: the
  // window's PUBLISHes mostly wait in its buffer, but PUBACKs come too
  // slowly for the library's walk to cost anything: the window stays.
  PublishLimit limit(2000);
  PathResult r = RunPath(&limit, 10'000, 2'000, 20'000);
  EXPECT_EQ(limit.limit(), 2000u);
  EXPECT_GT(r.acks_per_s, 495);
}

TEST(PublishLimit, RoundTripsThatVaryByThemselvesOnASlowPathDoNotShrinkIt) {
  // A cellular path: 50 ms at best, most round trips far longer, whatever
  // the link sends. At 512 per 150 ms PUBACKs come at about 3,400/s.
  PublishLimit limit(512);
  for (int round = 0; round < 50; ++round) {
    const uint32_t n = limit.limit();
    for (uint32_t i = 0; i < n; ++i) limit.OnAck(i % 4 == 0 ? 50'000 : 183'000);
  }
  EXPECT_EQ(limit.limit(), 512u);
}

TEST(PublishLimit, ConstantRoundTripsDoubleTheLimitEachRoundUpToTheWindow) {
  PublishLimit limit(1000);
  uint32_t rounds = 0;
  uint32_t before = limit.limit();
  while (limit.limit() < 1000 && rounds < 10) {
    for (uint32_t i = 0; i < before; ++i) limit.OnAck(20'000);
    ++rounds;
    EXPECT_EQ(limit.limit(), std::min<uint32_t>(before * 2, 1000)) << "round " << rounds;
    before = limit.limit();
  }
  // 64 -> 128 -> 256 -> 512 -> 1000.
  EXPECT_EQ(rounds, 4u);
}

TEST(PublishLimit, LongerRoundTripsWhilePubacksComeFastShrinkItByAnEighthUntilTheQueueIsSmall) {
  PublishLimit limit(1000);
  Rounds(&limit, 4, 1'000);
  ASSERT_EQ(limit.limit(), 1000u);
  // Every round trip of the next round ten times the shortest: 900 of 1,000
  // waited in a queue, at 100,000 PUBACKs/s.
  Rounds(&limit, 1, 10'000);
  EXPECT_EQ(limit.limit(), 875u);
  // Each later round like it shrinks it again, until no more than
  // kQueuedHigh wait (9/10 of the limit here).
  Rounds(&limit, 100, 10'000);
  EXPECT_LE(limit.limit() * 9 / 10, PublishLimit::kQueuedHigh);
  EXPECT_GT(limit.limit() * 9 / 10, PublishLimit::kQueuedHigh * 7 / 8);
  // Once the queue is gone it grows again by an eighth, no longer doubling.
  const uint32_t shrunk = limit.limit();
  Rounds(&limit, 1, 1'000);
  EXPECT_EQ(limit.limit(), shrunk + shrunk / 8);
  // The same queue with slow PUBACKs (2,000/s) does not shrink it.
  const uint32_t before = limit.limit();
  Rounds(&limit, 1, before * 500);
  EXPECT_GT(limit.limit(), before);
}

TEST(PublishLimit, ResetForgetsTheSessionAndTakesTheNewWindow) {
  PublishLimit limit(1000);
  Rounds(&limit, 4, 5'000);
  ASSERT_EQ(limit.limit(), 1000u);
  ASSERT_EQ(limit.shortest_round_trip_us(), 5'000);
  limit.Reset(20);
  EXPECT_EQ(limit.limit(), 20u);
  EXPECT_EQ(limit.shortest_round_trip_us(), 0);
  // A window below the floor: the limit stays within it either way.
  for (int r = 0; r < 20; ++r) {
    for (uint32_t i = 0; i < 20; ++i) limit.OnAck(r % 2 == 0 ? 100 : 100'000);
    EXPECT_LE(limit.limit(), 20u);
    EXPECT_GE(limit.limit(), 1u);
  }
}

TEST(PublishLimit, ANonPositiveRoundTripCountsAsOneMicrosecond) {
  PublishLimit limit(100);
  limit.OnAck(0);
  limit.OnAck(-5);
  EXPECT_EQ(limit.shortest_round_trip_us(), 1);
}

}  // namespace
}  // namespace ws
