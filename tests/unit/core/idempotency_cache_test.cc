#include "core/idempotency_cache.h"

#include <gtest/gtest.h>

#include <string>

namespace ws {
namespace {

using Outcome = IdempotencyCache::Outcome;

RememberedAnswer Answer(std::string body, int status = 202) {
  return RememberedAnswer{status, "application/json", std::move(body)};
}

TEST(IdempotencyCache, RetryOfAnsweredRequestGetsTheFirstAnswer) {
  FakeClock clock;
  IdempotencyCache cache(clock, {});
  IdempotencyCache::Claim first = cache.Begin("line-3", "k1", "fp-a");
  ASSERT_EQ(first.outcome, Outcome::kStarted);
  cache.Finish("line-3", "k1", first.ticket, Answer(R"({"id":"e1","sequence":7})"));

  IdempotencyCache::Claim again = cache.Begin("line-3", "k1", "fp-a");
  ASSERT_EQ(again.outcome, Outcome::kReplay);
  EXPECT_EQ(again.answer.status, 202);
  EXPECT_EQ(again.answer.body, R"({"id":"e1","sequence":7})");
  EXPECT_EQ(again.answer.content_type, "application/json");
}

TEST(IdempotencyCache, SameKeyDifferentRequestIsReuse) {
  FakeClock clock;
  IdempotencyCache cache(clock, {});
  IdempotencyCache::Claim first = cache.Begin("line-3", "k1", "fp-a");
  cache.Finish("line-3", "k1", first.ticket, Answer("{}"));
  EXPECT_EQ(cache.Begin("line-3", "k1", "fp-b").outcome, Outcome::kReused);
  // ... also while the first is still in flight.
  IdempotencyCache::Claim other = cache.Begin("line-3", "k2", "fp-a");
  ASSERT_EQ(other.outcome, Outcome::kStarted);
  EXPECT_EQ(cache.Begin("line-3", "k2", "fp-b").outcome, Outcome::kReused);
}

TEST(IdempotencyCache, SecondRequestWhileFirstIsInFlight) {
  FakeClock clock;
  IdempotencyCache cache(clock, {});
  IdempotencyCache::Claim first = cache.Begin("anonymous", "k", "fp");
  ASSERT_EQ(first.outcome, Outcome::kStarted);
  EXPECT_EQ(cache.Begin("anonymous", "k", "fp").outcome, Outcome::kInFlight);
  cache.Finish("anonymous", "k", first.ticket, Answer("{}"));
  EXPECT_EQ(cache.Begin("anonymous", "k", "fp").outcome, Outcome::kReplay);
}

TEST(IdempotencyCache, AbandonedKeyCanBeRetried) {
  FakeClock clock;
  IdempotencyCache cache(clock, {});
  IdempotencyCache::Claim first = cache.Begin("a", "k", "fp");
  cache.Abandon("a", "k", first.ticket);
  EXPECT_EQ(cache.size(), 0u);
  IdempotencyCache::Claim second = cache.Begin("a", "k", "fp-other");
  EXPECT_EQ(second.outcome, Outcome::kStarted);
  EXPECT_NE(second.ticket, first.ticket);
}

TEST(IdempotencyCache, KeysAreScopedPerProducer) {
  FakeClock clock;
  IdempotencyCache cache(clock, {});
  IdempotencyCache::Claim a = cache.Begin("line-3", "k", "fp-a");
  cache.Finish("line-3", "k", a.ticket, Answer("a"));
  EXPECT_EQ(cache.Begin("line-4", "k", "fp-b").outcome, Outcome::kStarted);
  // The scope and key are joined without ambiguity.
  EXPECT_EQ(cache.Begin("line-", "3k", "fp-a").outcome, Outcome::kStarted);
}

TEST(IdempotencyCache, EntriesExpireAfterTheTtl) {
  FakeClock clock;
  IdempotencyOptions o;
  o.ttl_s = 60;
  IdempotencyCache cache(clock, o);
  IdempotencyCache::Claim c = cache.Begin("a", "k", "fp");
  cache.Finish("a", "k", c.ticket, Answer("x"));
  clock.AdvanceMillis(59'999);
  EXPECT_EQ(cache.Begin("a", "k", "fp").outcome, Outcome::kReplay);
  clock.AdvanceMillis(1);
  EXPECT_EQ(cache.Begin("a", "k", "fp-new").outcome, Outcome::kStarted);
}

TEST(IdempotencyCache, OldestKeyIsEvictedAtTheBound) {
  FakeClock clock;
  IdempotencyOptions o;
  o.max_keys = 3;
  IdempotencyCache cache(clock, o);
  for (const char* k : {"k1", "k2", "k3", "k4"}) {
    IdempotencyCache::Claim c = cache.Begin("a", k, "fp");
    ASSERT_EQ(c.outcome, Outcome::kStarted);
    cache.Finish("a", k, c.ticket, Answer(k));
    clock.AdvanceMillis(10);
  }
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.Begin("a", "k1", "fp-x").outcome, Outcome::kStarted);  // forgotten
  EXPECT_EQ(cache.Begin("a", "k4", "fp").outcome, Outcome::kReplay);
}

TEST(IdempotencyCache, ByteBudgetEvictsOldestAnswers) {
  FakeClock clock;
  IdempotencyOptions o;
  o.max_bytes = 4096;
  IdempotencyCache cache(clock, o);
  IdempotencyCache::Claim a = cache.Begin("s", "a", "fp");
  cache.Finish("s", "a", a.ticket, Answer(std::string(1500, 'a')));
  IdempotencyCache::Claim b = cache.Begin("s", "b", "fp");
  cache.Finish("s", "b", b.ticket, Answer(std::string(1500, 'b')));
  IdempotencyCache::Claim c = cache.Begin("s", "c", "fp");
  cache.Finish("s", "c", c.ticket, Answer(std::string(1500, 'c')));
  EXPECT_LE(cache.bytes(), 4096u);
  EXPECT_EQ(cache.Begin("s", "c", "fp").outcome, Outcome::kReplay);
  EXPECT_EQ(cache.Begin("s", "a", "fp2").outcome, Outcome::kStarted);
}

TEST(IdempotencyCache, LateFinishOfAnEvictedEntryIsIgnored) {
  FakeClock clock;
  IdempotencyOptions o;
  o.max_keys = 1;
  IdempotencyCache cache(clock, o);
  IdempotencyCache::Claim a = cache.Begin("s", "a", "fp");
  IdempotencyCache::Claim b = cache.Begin("s", "b", "fp");  // evicts a, still in flight
  cache.Finish("s", "a", a.ticket, Answer("late"));
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Begin("s", "b", "fp").outcome, Outcome::kInFlight);
  cache.Finish("s", "b", b.ticket, Answer("b"));
  EXPECT_EQ(cache.Begin("s", "b", "fp").answer.body, "b");
}

TEST(IdempotencyCache, StaleTicketDoesNotTouchANewerUseOfTheKey) {
  FakeClock clock;
  IdempotencyOptions o;
  o.ttl_s = 10;
  IdempotencyCache cache(clock, o);
  IdempotencyCache::Claim old = cache.Begin("s", "k", "fp");
  clock.AdvanceMillis(10'000);  // the first use expired unanswered
  IdempotencyCache::Claim fresh = cache.Begin("s", "k", "fp");
  ASSERT_EQ(fresh.outcome, Outcome::kStarted);
  cache.Abandon("s", "k", old.ticket);
  EXPECT_EQ(cache.Begin("s", "k", "fp").outcome, Outcome::kInFlight);
}

TEST(IdempotencyCache, RequestThatNeverGetsAnAnswerFreesItsKeyEventually) {
  FakeClock clock;
  IdempotencyOptions o;
  o.in_flight_timeout_s = 30;
  IdempotencyCache cache(clock, o);
  ASSERT_EQ(cache.Begin("s", "k", "fp").outcome, Outcome::kStarted);
  clock.AdvanceMillis(29'000);
  EXPECT_EQ(cache.Begin("s", "k", "fp").outcome, Outcome::kInFlight);
  clock.AdvanceMillis(1'000);
  EXPECT_EQ(cache.Begin("s", "k", "fp").outcome, Outcome::kStarted);
}

}  // namespace
}  // namespace ws
