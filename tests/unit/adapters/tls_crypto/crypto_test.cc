#include "adapters/tls_crypto/crypto.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>

namespace ws {
namespace {

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}

TEST(RandomSource, UuidsAreVersion4AndDistinct) {
  Result<std::unique_ptr<RandomSource>> r = RandomSource::Create();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    Result<std::string> id = (*r)->UuidV4();
    ASSERT_TRUE(id.ok());
    ASSERT_EQ(id->size(), 36u);
    EXPECT_EQ((*id)[14], '4');
    EXPECT_TRUE((*id)[19] == '8' || (*id)[19] == '9' || (*id)[19] == 'a' || (*id)[19] == 'b') << *id;
    EXPECT_EQ((*id)[8], '-');
    seen.insert(*id);
  }
  EXPECT_EQ(seen.size(), 1000u);
  Result<std::string> tok = (*r)->HexToken(16);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->size(), 32u);
}

TEST(RandomSource, TimeOrderedUuidsCarryTheirMillisecondAndSortByIt) {
  Result<std::unique_ptr<RandomSource>> r = RandomSource::Create();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // 2026-11-21T10:00:00.123Z = 1795255200123 ms = 0x01a1fd8c697b.
  Result<std::string> id = (*r)->UuidV7(INT64_C(1795255200123));
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  ASSERT_EQ(id->size(), 36u);
  EXPECT_EQ(id->substr(0, 13), "01a1fd8c-697b") << *id;
  EXPECT_EQ((*id)[13], '-');
  EXPECT_EQ((*id)[14], '7') << *id;
  EXPECT_TRUE((*id)[19] == '8' || (*id)[19] == '9' || (*id)[19] == 'a' || (*id)[19] == 'b') << *id;

  // Later milliseconds sort later; within one millisecond they are distinct.
  std::set<std::string> same_ms;
  std::string previous;
  for (int64_t ms = 1795255200000; ms < 1795255200000 + 300; ++ms) {
    Result<std::string> a = (*r)->UuidV7(ms);
    Result<std::string> b = (*r)->UuidV7(ms);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(*a, *b);
    EXPECT_LT(previous, std::min(*a, *b)) << ms;
    previous = std::max(*a, *b);
    same_ms.insert(*a);
  }
  EXPECT_EQ(same_ms.size(), 300u);

  // Out of the 48-bit range: clamped, still well-formed.
  Result<std::string> early = (*r)->UuidV7(-5);
  ASSERT_TRUE(early.ok());
  EXPECT_EQ(early->substr(0, 13), "00000000-0000") << *early;
  Result<std::string> late = (*r)->UuidV7(INT64_MAX);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->substr(0, 13), "ffffffff-ffff") << *late;
  EXPECT_EQ((*late)[14], '7');
}

TEST(ConstantTimeEquals, ComparesContentAndLength) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(MbedtlsVersion, Is228) { EXPECT_EQ(MbedtlsLibraryVersion().rfind("2.28", 0), 0u); }

}  // namespace
}  // namespace ws
