// The outbox policy's decisions on plain numbers: class limits, overflow,
// the control reserve, max_age cut-offs (on a FakeClock), replay ranges and
// the latency histogram.
#include "core/outbox_policy.h"

#include <gtest/gtest.h>

#include "platform/clock.h"

namespace ws {
namespace {

constexpr size_t kControl = static_cast<size_t>(Priority::kControl);
constexpr size_t kNormal = static_cast<size_t>(Priority::kNormal);
constexpr size_t kBulk = static_cast<size_t>(Priority::kBulk);

StoreLimits Limits(uint64_t max_bytes, uint64_t reserve = 0) {
  StoreLimits l;
  l.max_bytes = max_bytes;
  l.control_reserve_bytes = reserve;
  return l;
}

TEST(OutboxPolicyTest, DefaultsRejectNewExceptBulkWhichDropsOldest) {
  const ClassLimitsArray d = DefaultClassLimitsArray();
  for (Priority p : kAllPriorities) {
    const ClassLimits& c = d[static_cast<size_t>(p)];
    EXPECT_EQ(c.max_bytes, 0u);
    EXPECT_EQ(c.max_count, 0u);
    EXPECT_EQ(c.max_age_s, 0);
    EXPECT_EQ(c.overflow, p == Priority::kBulk ? OverflowPolicy::kDropOldest : OverflowPolicy::kRejectNew)
        << PriorityName(p);
  }
}

TEST(OutboxPolicyTest, OverflowNamesRoundTrip) {
  for (OverflowPolicy p : {OverflowPolicy::kRejectNew, OverflowPolicy::kDropOldest}) {
    OverflowPolicy back = p == OverflowPolicy::kRejectNew ? OverflowPolicy::kDropOldest : OverflowPolicy::kRejectNew;
    ASSERT_TRUE(ParseOverflowPolicy(OverflowPolicyName(p), &back));
    EXPECT_EQ(back, p);
  }
  OverflowPolicy untouched = OverflowPolicy::kDropOldest;
  EXPECT_FALSE(ParseOverflowPolicy("drop-oldest", &untouched));
  EXPECT_FALSE(ParseOverflowPolicy("", &untouched));
  EXPECT_EQ(untouched, OverflowPolicy::kDropOldest);
}

TEST(OutboxPolicyTest, AdmitsWhileEveryLimitHasRoom) {
  StoreLimits l = Limits(1000);
  l.classes[kNormal].max_count = 3;
  l.classes[kNormal].max_bytes = 500;
  StoreUsage u;
  u.classes[kNormal] = {2, 300};
  EXPECT_EQ(DecideAdmission(l, u, Priority::kNormal, 200).action, Admission::kAdmit);  // exactly at both limits
}

TEST(OutboxPolicyTest, ClassCountLimitRejectsOrDropsByPolicy) {
  StoreLimits l = Limits(1 << 20);
  l.classes[kNormal].max_count = 2;
  l.classes[kBulk].max_count = 2;
  StoreUsage u;
  u.classes[kNormal] = {2, 20};
  u.classes[kBulk] = {2, 20};
  AdmissionDecision normal = DecideAdmission(l, u, Priority::kNormal, 10);
  EXPECT_EQ(normal.action, Admission::kReject);
  EXPECT_NE(normal.reason.find("class normal is at max_count 2"), std::string::npos) << normal.reason;
  AdmissionDecision bulk = DecideAdmission(l, u, Priority::kBulk, 10);
  EXPECT_EQ(bulk.action, Admission::kDropOldest);
  // Other classes are not affected by normal's limit.
  EXPECT_EQ(DecideAdmission(l, u, Priority::kHigh, 10).action, Admission::kAdmit);
}

TEST(OutboxPolicyTest, ClassByteLimit) {
  StoreLimits l = Limits(1 << 20);
  l.classes[kNormal].max_bytes = 100;
  StoreUsage u;
  u.classes[kNormal] = {5, 95};
  AdmissionDecision d = DecideAdmission(l, u, Priority::kNormal, 6);
  EXPECT_EQ(d.action, Admission::kReject);
  EXPECT_NE(d.reason.find("max_bytes 100"), std::string::npos) << d.reason;
  EXPECT_EQ(DecideAdmission(l, u, Priority::kNormal, 5).action, Admission::kAdmit);
}

TEST(OutboxPolicyTest, DropOldestRepeatsUntilItFitsThenRejectsWhenTheClassIsEmpty) {
  StoreLimits l = Limits(1000);
  // Normal events fill most of the store; bulk may only drop its own.
  StoreUsage u;
  u.classes[kNormal] = {9, 950};
  u.classes[kBulk] = {2, 80};
  // Simulates the store: each kDropOldest removes one 40-byte bulk event.
  int dropped = 0;
  AdmissionDecision d = DecideAdmission(l, u, Priority::kBulk, 60);
  while (d.action == Admission::kDropOldest) {
    ++dropped;
    u.classes[kBulk].count -= 1;
    u.classes[kBulk].bytes -= 40;
    d = DecideAdmission(l, u, Priority::kBulk, 60);
  }
  EXPECT_EQ(dropped, 2);
  EXPECT_EQ(d.action, Admission::kReject) << "the class is empty and the store is still full";
  EXPECT_NE(d.reason.find("outbox full"), std::string::npos) << d.reason;

  // With room freed by dropping, the event is admitted.
  u.classes[kNormal] = {8, 880};
  u.classes[kBulk] = {2, 80};
  dropped = 0;
  d = DecideAdmission(l, u, Priority::kBulk, 60);
  while (d.action == Admission::kDropOldest) {
    ++dropped;
    u.classes[kBulk].count -= 1;
    u.classes[kBulk].bytes -= 40;
    d = DecideAdmission(l, u, Priority::kBulk, 60);
  }
  EXPECT_EQ(dropped, 1);
  EXPECT_EQ(d.action, Admission::kAdmit);
}

TEST(OutboxPolicyTest, AnEventThatCanNeverFitIsRejectedWithoutDropping) {
  StoreLimits l = Limits(1000);
  l.classes[kBulk].max_bytes = 100;
  StoreUsage u;
  u.classes[kBulk] = {3, 90};
  AdmissionDecision d = DecideAdmission(l, u, Priority::kBulk, 101);
  EXPECT_EQ(d.action, Admission::kReject);
  d = DecideAdmission(Limits(1000), u, Priority::kBulk, 1001);
  EXPECT_EQ(d.action, Admission::kReject);
  EXPECT_NE(d.reason.find("1001"), std::string::npos) << d.reason;
}

TEST(OutboxPolicyTest, ControlReserveIsLeftForControlOnly) {
  const StoreLimits l = Limits(10'000, 2'000);
  EXPECT_EQ(StoreCapFor(l, Priority::kControl), 10'000u);
  EXPECT_EQ(StoreCapFor(l, Priority::kNormal), 8'000u);
  StoreUsage u;
  u.classes[kNormal] = {79, 7'900};
  EXPECT_EQ(DecideAdmission(l, u, Priority::kNormal, 100).action, Admission::kAdmit);
  AdmissionDecision normal = DecideAdmission(l, u, Priority::kNormal, 101);
  EXPECT_EQ(normal.action, Admission::kReject);
  EXPECT_NE(normal.reason.find("reserved for control"), std::string::npos) << normal.reason;
  // The store is full for normal events, control replies still fit.
  u.classes[kNormal] = {80, 8'000};
  EXPECT_EQ(DecideAdmission(l, u, Priority::kControl, 1'500).action, Admission::kAdmit);
  u.classes[kControl] = {15, 1'500};
  EXPECT_EQ(DecideAdmission(l, u, Priority::kControl, 500).action, Admission::kAdmit);
  EXPECT_EQ(DecideAdmission(l, u, Priority::kControl, 501).action, Admission::kReject);
  // A reserve as large as the store leaves nothing for the others.
  EXPECT_EQ(StoreCapFor(Limits(100, 200), Priority::kHigh), 0u);
}

TEST(OutboxPolicyTest, DeadLettersCountAgainstTheStore) {
  const StoreLimits l = Limits(1000);
  StoreUsage u;
  u.classes[kNormal] = {1, 100};
  u.other_bytes = 850;
  EXPECT_EQ(u.TotalBytes(), 950u);
  EXPECT_EQ(DecideAdmission(l, u, Priority::kNormal, 50).action, Admission::kAdmit);
  EXPECT_EQ(DecideAdmission(l, u, Priority::kNormal, 51).action, Admission::kReject);
}

TEST(OutboxPolicyTest, MaxAgeCutoffFollowsTheClock) {
  FakeClock clock;
  ClassLimits c;
  EXPECT_EQ(MaxAgeCutoffUs(c, clock.WallMicros()), 0) << "no age limit";
  c.max_age_s = 60;
  const int64_t start = clock.WallMicros();
  EXPECT_EQ(MaxAgeCutoffUs(c, clock.WallMicros()), start - 60'000'000);
  clock.AdvanceMillis(30'000);
  // An event accepted at `start` is 30 s old: not yet past a 60 s limit.
  EXPECT_LT(MaxAgeCutoffUs(c, clock.WallMicros()), start);
  clock.AdvanceMillis(30'000);
  EXPECT_EQ(MaxAgeCutoffUs(c, clock.WallMicros()), start);  // exactly 60 s: expired (at or before)
  c.max_age_s = INT64_MAX / 1000;                           // saturates, expires nothing
  EXPECT_EQ(MaxAgeCutoffUs(c, clock.WallMicros()), 0);
}

TEST(OutboxPolicyTest, ReplayRanges) {
  EXPECT_TRUE(CheckReplayRange({}).ok());
  EXPECT_TRUE(CheckReplayRange({5, 9, 0, 0}).ok());
  EXPECT_TRUE(CheckReplayRange({9, 0, 0, 0}).ok());
  EXPECT_EQ(CheckReplayRange({9, 5, 0, 0}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckReplayRange({0, 0, 20, 10}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckReplayRange({-1, 0, 0, 0}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckReplayRange({0, 0, 0, -1}).code(), StatusCode::kInvalidArgument);

  // Everything when unbounded.
  EXPECT_TRUE(InReplayRange({}, 1, 1));
  // By sequence, inclusive, open ends.
  EXPECT_TRUE(InReplayRange({5, 9, 0, 0}, 5, 0));
  EXPECT_TRUE(InReplayRange({5, 9, 0, 0}, 9, 0));
  EXPECT_FALSE(InReplayRange({5, 9, 0, 0}, 10, 0));
  EXPECT_FALSE(InReplayRange({5, 9, 0, 0}, 4, 0));
  EXPECT_TRUE(InReplayRange({5, 0, 0, 0}, 1'000'000, 0));
  EXPECT_TRUE(InReplayRange({0, 9, 0, 0}, 1, 0));
  // By time.
  EXPECT_TRUE(InReplayRange({0, 0, 100, 200}, 1, 150));
  EXPECT_FALSE(InReplayRange({0, 0, 100, 200}, 1, 201));
  EXPECT_TRUE(InReplayRange({0, 0, 100, 0}, 1, 1'000'000));
  // Either criterion selects.
  EXPECT_TRUE(InReplayRange({5, 9, 100, 200}, 50, 150));
  EXPECT_TRUE(InReplayRange({5, 9, 100, 200}, 7, 999));
  EXPECT_FALSE(InReplayRange({5, 9, 100, 200}, 50, 999));
}

TEST(OutboxPolicyTest, AckLatencyHistogram) {
  EXPECT_EQ(AckLatencyBucket(0), 0u);
  EXPECT_EQ(AckLatencyBucket(250), 0u);
  EXPECT_EQ(AckLatencyBucket(251), 1u);
  EXPECT_EQ(AckLatencyBucket(100'000), kAckLatencyBucketCount - 2);
  EXPECT_EQ(AckLatencyBucket(100'001), kAckLatencyBucketCount - 1);

  OutboxStats s;
  RecordAckLatency(300, 4, &s);
  RecordAckLatency(5'000'000, 1, &s);
  RecordAckLatency(-5, 1, &s);  // a clock step never makes a negative observation
  RecordAckLatency(1000, 0, &s);
  EXPECT_EQ(s.ack_latency_count, 6u);
  EXPECT_EQ(s.ack_latency_sum_us, 4u * 300 + 5'000'000);
  EXPECT_EQ(s.ack_latency_buckets[0], 1u);
  EXPECT_EQ(s.ack_latency_buckets[1], 4u);
  EXPECT_EQ(s.ack_latency_buckets[kAckLatencyBucketCount - 1], 1u);
}

}  // namespace
}  // namespace ws
