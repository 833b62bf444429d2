#include "platform/signals.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <thread>
#include <vector>

#include "platform/event_loop.h"

namespace ws {
namespace {

// Signals are process-wide, so these tests take care about threads:
//  - the loop runs on the test (main) thread, which created the watcher and
//    so has the signals blocked;
//  - raise() targets the calling thread, so it is called on the loop thread;
//  - kill(getpid()) targets the process; it is sent from a thread started
//    after the watcher (it inherits the blocked mask), so every thread has
//    the signal blocked and it stays pending for the signalfd.
constexpr int kWatchdogMs = 30'000;

bool Blocked(int sig) {
  sigset_t cur;
  sigemptyset(&cur);
  EXPECT_EQ(pthread_sigmask(SIG_BLOCK, nullptr, &cur), 0);
  return sigismember(&cur, sig) == 1;
}

class SignalWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status().ToString();
    loop_ = std::move(loop).value();
  }

  std::unique_ptr<SignalWatcher> MakeWatcher(SignalWatcher::Handlers handlers) {
    Result<std::unique_ptr<SignalWatcher>> w = SignalWatcher::Create(loop_.get(), std::move(handlers));
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    return w.ok() ? std::move(w).value() : nullptr;
  }

  // False if the watchdog had to end the loop.
  bool Run() {
    bool fired = false;
    EventLoop::TimerId watchdog = loop_->AddTimer(kWatchdogMs, [&] {
      fired = true;
      loop_->Stop();
    });
    EXPECT_TRUE(loop_->Run().ok());
    loop_->CancelTimer(watchdog);
    return !fired;
  }

  std::unique_ptr<EventLoop> loop_;
};

TEST_F(SignalWatcherTest, CreateBlocksHandledSignals) {
  auto watcher = MakeWatcher({});
  ASSERT_NE(watcher, nullptr);
  EXPECT_TRUE(Blocked(SIGTERM));
  EXPECT_TRUE(Blocked(SIGINT));
  EXPECT_TRUE(Blocked(SIGHUP));
}

TEST_F(SignalWatcherTest, RaisedSighupRunsReloadOnLoopThread) {
  const std::thread::id main_id = std::this_thread::get_id();
  int reloads = 0, stops = 0;
  bool on_loop_thread = false;
  auto watcher = MakeWatcher({
      .on_stop = [&] { ++stops; },
      .on_reload =
          [&] {
            ++reloads;
            on_loop_thread = loop_->InLoopThread() && std::this_thread::get_id() == main_id;
            loop_->Stop();
          },
  });
  ASSERT_NE(watcher, nullptr);
  loop_->Post([] { ASSERT_EQ(raise(SIGHUP), 0); });
  EXPECT_TRUE(Run());
  EXPECT_EQ(reloads, 1);
  EXPECT_EQ(stops, 0);
  EXPECT_TRUE(on_loop_thread);
}

TEST_F(SignalWatcherTest, SigtermToProcessRunsStop) {
  int reloads = 0, stops = 0;
  bool on_loop_thread = false;
  auto watcher = MakeWatcher({
      .on_stop =
          [&] {
            ++stops;
            on_loop_thread = loop_->InLoopThread();
            loop_->Stop();
          },
      .on_reload = [&] { ++reloads; },
  });
  ASSERT_NE(watcher, nullptr);
  ASSERT_TRUE(Blocked(SIGTERM));
  // Sent by another thread while the loop waits, like `kill <pid>` from outside.
  bool sender_blocked = false;
  int kill_rc = -1;
  std::thread sender([&] {
    sender_blocked = Blocked(SIGTERM);
    kill_rc = ::kill(::getpid(), SIGTERM);
  });
  EXPECT_TRUE(Run());
  sender.join();
  EXPECT_TRUE(sender_blocked);
  EXPECT_EQ(kill_rc, 0);
  EXPECT_EQ(stops, 1);
  EXPECT_EQ(reloads, 0);
  EXPECT_TRUE(on_loop_thread);
}

TEST_F(SignalWatcherTest, SigintRunsStop) {
  int stops = 0;
  auto watcher = MakeWatcher({
      .on_stop =
          [&] {
            ++stops;
            loop_->Stop();
          },
      .on_reload = nullptr,
  });
  ASSERT_NE(watcher, nullptr);
  loop_->Post([] { ASSERT_EQ(raise(SIGINT), 0); });
  EXPECT_TRUE(Run());
  EXPECT_EQ(stops, 1);
}

TEST_F(SignalWatcherTest, MissingHandlerIsIgnored) {
  // No on_reload: SIGHUP must neither crash nor end the process; the later
  // SIGTERM still arrives.
  std::vector<int> order;
  auto watcher = MakeWatcher({
      .on_stop =
          [&] {
            order.push_back(SIGTERM);
            loop_->Stop();
          },
      .on_reload = nullptr,
  });
  ASSERT_NE(watcher, nullptr);
  loop_->Post([] { ASSERT_EQ(raise(SIGHUP), 0); });
  // Two rounds later, so SIGHUP has been read on its own first.
  loop_->Post([this] { loop_->Post([] { ASSERT_EQ(raise(SIGTERM), 0); }); });
  EXPECT_TRUE(Run());
  EXPECT_EQ(order, std::vector<int>{SIGTERM});
}

TEST_F(SignalWatcherTest, DestroyedWatcherLeavesLoopUsable) {
  auto watcher = MakeWatcher({});
  ASSERT_NE(watcher, nullptr);
  watcher.reset();
  // A new watcher on the same loop can register again.
  int reloads = 0;
  watcher = MakeWatcher({.on_stop = nullptr,
                         .on_reload =
                             [&] {
                               ++reloads;
                               loop_->Stop();
                             }});
  ASSERT_NE(watcher, nullptr);
  loop_->Post([] { ASSERT_EQ(raise(SIGHUP), 0); });
  EXPECT_TRUE(Run());
  EXPECT_EQ(reloads, 1);
}

TEST(BlockProcessSignalsTest, WriteToClosedPeerIsEpipeNotDeath) {
  ASSERT_TRUE(BlockProcessSignals().ok());
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  ::close(fds[1]);
  char c = 'x';
  // Without SIGPIPE ignored this write would kill the test process.
  EXPECT_EQ(::write(fds[0], &c, 1), -1);
  EXPECT_EQ(errno, EPIPE);
  ::close(fds[0]);
}

}  // namespace
}  // namespace ws
