// What the backbone link's tests share: the event loop on a thread of its
// own, as the daemon runs it, and a fixture holding a store and a link that
// lives on that loop.
#pragma once

#include <future>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>

#include <gtest/gtest.h>

#include "adapters/mqtt/backbone_link.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "platform/event_loop.h"
#include "tests/support/test_support.h"

namespace ws::testing {

// An EventLoop running on its own thread, as the daemon's main loop does.
class LoopThread {
 public:
  LoopThread() {
    auto loop = EventLoop::Create();
    if (!loop.ok()) std::abort();
    loop_ = std::move(loop).value();
    thread_ = std::thread([this] {
      Status s = loop_->Run();
      if (!s.ok()) std::abort();
    });
  }
  ~LoopThread() {
    loop_->Stop();
    thread_.join();
  }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  EventLoop* loop() { return loop_.get(); }

  // Runs `fn` on the loop thread and returns its result.
  template <typename F>
  auto Call(F fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::promise<R> done;
    std::future<R> result = done.get_future();
    loop_->Post([&] {
      if constexpr (std::is_void_v<R>) {
        fn();
        done.set_value();
      } else {
        done.set_value(fn());
      }
    });
    return result.get();
  }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

// A store in a temporary folder and a link on the loop thread.
class LinkFixture : public ::testing::Test {
 protected:
  // Opens the store (fatal to the test if it cannot be).
  void OpenOutbox() {
    SqliteOutboxOptions o;
    o.path = dir_.File("var/outbox.db");
    o.commit_window_us = 500;
    auto outbox = SqliteOutbox::Open(o);
    ASSERT_TRUE(outbox.ok()) << outbox.status().ToString();
    outbox_ = std::move(outbox).value();
  }

  void TearDown() override {
    if (link_) DestroyLink();
    // No append announcement may still be on its way to the loop when the
    // members go: the closed store posts no more, and the empty call runs
    // after whatever it posted before.
    outbox_.reset();
    loop_.Call([] {});
  }

  void StartLink(BackboneOptions o) {
    Status s = loop_.Call([&]() -> Status {
      auto link = BackboneLink::Create(loop_.loop(), outbox_.get(), std::move(o));
      if (!link.ok()) return link.status();
      link_ = std::move(link).value();
      link_->Start();
      return Status::Ok();
    });
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void DestroyLink() {
    loop_.Call([&] { link_.reset(); });
  }

  BackboneStats LinkStats() {
    return loop_.Call([&] { return link_->Stats(); });
  }

  TempDir dir_;
  LoopThread loop_;
  std::unique_ptr<SqliteOutbox> outbox_;
  std::unique_ptr<BackboneLink> link_;  // lives on the loop thread
};

}  // namespace ws::testing
