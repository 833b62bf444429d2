#include "adapters/tls_crypto/crypto.h"

#include <gtest/gtest.h>

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

TEST(ConstantTimeEquals, ComparesContentAndLength) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(MbedtlsVersion, Is228) { EXPECT_EQ(MbedtlsLibraryVersion().rfind("2.28", 0), 0u); }

}  // namespace
}  // namespace ws
