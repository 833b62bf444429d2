#include "platform/process_stats.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "platform/file_system.h"
#include "platform/unique_fd.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

ProcessStats Read() {
  Result<ProcessStats> r = ReadProcessStats();
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : ProcessStats{};
}

TEST(ProcessStatsTest, MemoryFigures) {
  ProcessStats st = Read();
  EXPECT_GT(st.rss_bytes, 0u);
  EXPECT_EQ(st.rss_bytes % 1024, 0u);  // reported in kB
  EXPECT_GE(st.peak_rss_bytes, st.rss_bytes);
}

TEST(ProcessStatsTest, ReleaseFreeHeapGivesFreedPagesBack) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer has its own allocator";
#else
  // 16 MiB in small blocks, then all freed but every 64th: the free runs
  // between the survivors are whole pages the allocator keeps for itself.
  constexpr size_t kBlocks = 32768;
  std::vector<char*> blocks(kBlocks);
  for (char*& b : blocks) {
    b = static_cast<char*>(std::malloc(512));
    ASSERT_NE(b, nullptr);
    std::memset(b, 0x5a, 512);  // touch it: resident
  }
  for (size_t i = 0; i < kBlocks; ++i) {
    if (i % 64 != 0) {
      std::free(blocks[i]);
      blocks[i] = nullptr;
    }
  }
  const uint64_t before = Read().rss_bytes;
  EXPECT_TRUE(ReleaseFreeHeap());
  const uint64_t after = Read().rss_bytes;
  EXPECT_LT(after + 8 * 1024 * 1024, before) << "before " << before << " after " << after;
  for (char* b : blocks) std::free(b);
#endif
}

TEST(ProcessStatsTest, CountsThreads) {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer starts a helper thread of its own with the first thread
  // the process creates: have that happen first. (Not elsewhere: under qemu
  // a joined thread can still be listed for a moment.)
  std::thread([] {}).join();
#endif
  uint32_t before = Read().threads;
  ASSERT_GE(before, 1u);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  int started = 0;
  std::vector<std::thread> workers;
  for (int i = 0; i < 3; ++i) {
    workers.emplace_back([&] {
      std::unique_lock<std::mutex> lock(mu);
      ++started;
      cv.notify_all();
      cv.wait(lock, [&] { return release; });
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started == 3; });
  }
  uint32_t during = Read().threads;
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : workers) t.join();
  EXPECT_EQ(during, before + 3);
}

TEST(ProcessStatsTest, CountsOpenDescriptors) {
  uint32_t before = Read().open_fds;
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 5; ++i) {
    fds.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fds.back().valid());
  }
  EXPECT_EQ(Read().open_fds, before + 5);
  fds.clear();
  EXPECT_EQ(Read().open_fds, before);
}

TEST(ProcessStatsTest, WriteBytesGrowWithFileWrites) {
  ws::testing::TempDir dir;
  ProcessStats before = Read();

  constexpr size_t kTotal = 4 * 1024 * 1024;
  {
    UniqueFd fd(::open(dir.File("wear").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
    std::string chunk(64 * 1024, 'w');
    for (size_t done = 0; done < kTotal; done += chunk.size()) {
      ASSERT_EQ(::write(fd.get(), chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
    }
    ASSERT_EQ(::fsync(fd.get()), 0);
  }
  ProcessStats after = Read();

  if (before.write_bytes == 0 && after.write_bytes == 0) {
    GTEST_SKIP() << "/proc/self/io reports no write_bytes here (no task I/O accounting, an emulator, "
                    "or a memory-backed TMPDIR)";
  }
  EXPECT_GE(after.write_bytes - before.write_bytes, kTotal / 2)
      << "before " << before.write_bytes << " after " << after.write_bytes;
  EXPECT_GT(after.cpu_user_us + after.cpu_system_us, 0u);
}

TEST(KernelBootIdTest, IsTheSameForEveryProcessOfThisBoot) {
  Result<std::string> id = KernelBootId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->size(), 36u) << *id;
  EXPECT_EQ(id->find('\n'), std::string::npos);
  // What a shell reads from the same file: the whole machine shares it.
  Result<std::string> raw = ReadFile("/proc/sys/kernel/random/boot_id");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, *id + "\n");
  Result<std::string> again = KernelBootId();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *id);
}

}  // namespace
}  // namespace ws
