// The test support's own promises that tests rely on.
#include <cstdint>
#include <set>

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace ws {
namespace {

// The kernel offers a port that was handed out and closed again; a broker
// given the same "free" port for two listeners failed to start. Before the
// ports were kept, 500 asks drew a repeat (by ask 56 to 302) in each of
// five runs.
TEST(FreeLoopbackPortTest, NeverHandsOutTheSamePortTwice) {
  std::set<uint16_t> seen;
  for (int i = 0; i < 500; ++i) {
    const uint16_t port = testing::FreeLoopbackPort();
    EXPECT_NE(port, 0);
    EXPECT_TRUE(seen.insert(port).second) << "port " << port << " again at ask " << i;
  }
}

}  // namespace
}  // namespace ws
