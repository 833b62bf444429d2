// The test support's own promises that tests rely on.
#include <cstdint>
#include <set>
#include <string>

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

// A command that cannot start: the forked child says why on the log and
// exits 127, without stdio (the test process has threads).
TEST(SubprocessTest, ACommandThatCannotStartExits127AndSaysWhy) {
  testing::TempDir dir;
  const std::string log = dir.File("child.log");
  testing::Subprocess child({"/nonexistent/waystation-test-binary", "arg"}, log);
  EXPECT_EQ(child.Wait(10000), 127);
  EXPECT_NE(testing::Slurp(log).find("exec /nonexistent/waystation-test-binary failed, errno 2\n"), std::string::npos)
      << testing::Slurp(log);
  EXPECT_EQ(testing::RunCommand({"/nonexistent/waystation-test-binary"}, nullptr, 10000), 127);
}

}  // namespace
}  // namespace ws
