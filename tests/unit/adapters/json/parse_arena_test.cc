#include "adapters/json/parse_arena.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "adapters/json/cjson_ptr.h"
#include "adapters/json/json_codec.h"

namespace ws::json_internal {
namespace {

std::string Batch(int events, int data_bytes) {
  std::string body = "[";
  for (int i = 0; i < events; ++i) {
    if (i > 0) body += ',';
    body += R"({"specversion":"1.0","id":"e-)" + std::to_string(i) +
            R"(","source":"/s","type":"t.x","seq":)" + std::to_string(i) + R"(,"data":{"v":")" +
            std::string(static_cast<size_t>(data_bytes), static_cast<char>('a' + i % 26)) + R"("}})";
  }
  return body + "]";
}

TEST(ParseArenaTest, TreesParsedInAScopeComeFromItsArenaAndOthersFromTheHeap) {
  CjsonPtr outside = ParseExact(R"({"a":[1,2,{"b":"c"}]})");
  ASSERT_NE(outside, nullptr);
  EXPECT_FALSE(InParseScope(outside.get()));
  {
    ParseScope scope;
    CjsonPtr inside = ParseExact(R"({"a":[1,2,{"b":"c"}]})");
    ASSERT_NE(inside, nullptr);
    EXPECT_TRUE(InParseScope(inside.get()));
    EXPECT_TRUE(InParseScope(inside->child->child));
    EXPECT_FALSE(InParseScope(outside.get()));
    // A heap tree dropped inside a scope is freed (the leak check of the
    // sanitizer build would report it otherwise).
    outside.reset();
    // Printing allocates too, and the text outlives the scope as a string.
    EXPECT_EQ(PrintCompact(inside.get()), R"({"a":[1,2,{"b":"c"}]})");
  }
  CjsonPtr after = ParseExact("[true]");
  ASSERT_NE(after, nullptr);
  EXPECT_FALSE(InParseScope(after.get()));
}

TEST(ParseArenaTest, EventsOutliveTheScopeAndALaterParseReusesTheArena) {
  Result<std::vector<Event>> first = ParseEventBatch(Batch(50, 40), false, 1000);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const ArenaFootprint kept = ThreadArenaFootprint();
  EXPECT_GT(kept.bytes, 0u);
  Result<std::vector<Event>> second = ParseEventBatch(Batch(50, 40), false, 1000);
  ASSERT_TRUE(second.ok());
  // The same work fits in the blocks kept from the first parse.
  EXPECT_EQ(ThreadArenaFootprint().bytes, kept.bytes);
  ASSERT_EQ(first->size(), 50u);
  for (size_t i = 0; i < first->size(); ++i) {
    const Event& e = (*first)[i];
    EXPECT_EQ(e.id, "e-" + std::to_string(i));
    EXPECT_EQ(*e.FindAttribute("seq"), std::to_string(i));
    EXPECT_EQ(e.data, R"({"v":")" + std::string(40, static_cast<char>('a' + i % 26)) + R"("})");
    EXPECT_EQ(e.data, (*second)[i].data);
  }
}

TEST(ParseArenaTest, ALargeParseGrowsTheArenaAndItsEndGivesTheExcessBack) {
  // About 2 MiB of tree: more than one block of the largest size.
  Result<std::vector<Event>> big = ParseEventBatch(Batch(400, 4000), false, 1000);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->size(), 400u);
  const ArenaFootprint after = ThreadArenaFootprint();
  EXPECT_LE(after.bytes, kArenaKeepBytes);
  EXPECT_GE(after.blocks, 1u);
  // A failed parse in the middle of a value gives everything back as well.
  std::string broken = Batch(400, 4000);
  broken.resize(broken.size() - 10);
  EXPECT_FALSE(ParseEventBatch(broken, false, 1000).ok());
  EXPECT_LE(ThreadArenaFootprint().bytes, kArenaKeepBytes);
}

TEST(ParseArenaTest, AnInnerScopeLeavesTheOuterOnesTreeAlone) {
  ParseScope outer;
  CjsonPtr a = ParseExact(R"({"k":"outer value"})");
  ASSERT_NE(a, nullptr);
  {
    ParseScope inner;
    CjsonPtr b = ParseExact(R"({"k":"inner value"})");
    ASSERT_NE(b, nullptr);
  }
  // Still the outer scope's memory, not reset by the inner one's end.
  EXPECT_TRUE(InParseScope(a.get()));
  EXPECT_EQ(PrintCompact(a.get()), R"({"k":"outer value"})");
}

TEST(ParseArenaTest, ThreadsParseInArenasOfTheirOwn) {
  const std::string body = Batch(20, 100);
  std::vector<std::thread> threads;
  std::vector<int> good(4, 0);
  for (size_t t = 0; t < good.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        Result<std::vector<Event>> r = ParseEventBatch(body, false, 1000);
        if (r.ok() && r->size() == 20 && r->back().id == "e-19") ++good[t];
        // The configuration parser's heap trees on the same thread.
        if (ParseExact(R"({"x":[1,2,3]})") == nullptr) --good[t];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int g : good) EXPECT_EQ(g, 50);
}

}  // namespace
}  // namespace ws::json_internal
