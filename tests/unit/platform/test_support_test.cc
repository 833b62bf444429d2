// The test support's own promises that tests rely on.
#include <cstdint>
#include <fstream>
#include <set>
#include <string>

#include <gtest/gtest-spi.h>
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

TEST(SanitizerReportTest, FindsEachSanitizersReportAndNothingInACleanLog) {
  EXPECT_EQ(testing::SanitizerReport("2026-11-23T07:00:00Z info node: ready\nstopped\n"), "");
  EXPECT_EQ(testing::SanitizerReport(""), "");
  const std::string log =
      "2026-11-23T07:00:00Z info node: ready\n"
      "==4711==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010\n"
      "    #0 0x55 in ws::Foo() core/foo.cc:12\n";
  EXPECT_EQ(testing::SanitizerReport(log),
            "==4711==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010\n"
            "    #0 0x55 in ws::Foo() core/foo.cc:12\n");
  EXPECT_NE(testing::SanitizerReport("==1==ERROR: LeakSanitizer: detected memory leaks\n"), "");
  EXPECT_NE(testing::SanitizerReport("WARNING: ThreadSanitizer: data race (pid=9)\n"), "");
  EXPECT_EQ(testing::SanitizerReport("x\ncore/a.cc:3:7: runtime error: signed integer overflow\n"),
            "core/a.cc:3:7: runtime error: signed integer overflow\n");
  // The first of two reports, whatever its kind.
  EXPECT_EQ(testing::SanitizerReport("WARNING: ThreadSanitizer: data race\n==2==ERROR: AddressSanitizer: x\n")
                .rfind("WARNING: ThreadSanitizer", 0),
            0u);
}

TEST(SlurpTest, ReadsFromTheGivenByteOn) {
  testing::TempDir dir;
  const std::string path = dir.File("f");
  {
    std::ofstream(path, std::ios::binary) << "abcdef";
  }
  EXPECT_EQ(testing::Slurp(path), "abcdef");
  EXPECT_EQ(testing::Slurp(path, 2), "cdef");
  EXPECT_EQ(testing::Slurp(path, 6), "");
  EXPECT_EQ(testing::Slurp(path, 10), "");
  EXPECT_EQ(testing::Slurp(dir.File("missing"), 2), "");
}

// Runs a child that prints an AddressSanitizer report into `log` and
// expects exactly that report to fail the test once the child is gone.
void ExpectAReportingChildFailsTheTest(const std::string& log) {
  EXPECT_NONFATAL_FAILURE(
      {
        testing::Subprocess child({"sh", "-c", "echo '==7==ERROR: AddressSanitizer: heap-use-after-free'"}, log);
        EXPECT_EQ(child.Wait(10000), 0);
      },
      "AddressSanitizer: heap-use-after-free");
}

// A process whose log holds a sanitizer's report fails the test that ran
// it, once the process is gone.
TEST(SubprocessTest, ASanitizerReportInItsLogFailsTheTest) {
  testing::TempDir dir;
  ExpectAReportingChildFailsTheTest(dir.File("child.log"));
}

// A log that an earlier process of the test already wrote a report into
// (a daemon restarted onto the same log): the next process is charged only
// with what it writes itself.
TEST(SubprocessTest, ALaterProcessOnTheSameLogIsNotChargedWithAnEarlierReport) {
  testing::TempDir dir;
  const std::string log = dir.File("child.log");
  ExpectAReportingChildFailsTheTest(log);
  {
    testing::Subprocess second({"sh", "-c", "echo clean"}, log);
    EXPECT_EQ(second.Wait(10000), 0);
  }
  EXPECT_NE(testing::Slurp(log).find("clean"), std::string::npos);
}

}  // namespace
}  // namespace ws
