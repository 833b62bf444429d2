// A small single-threaded event loop: epoll for file descriptors, one-shot
// timers, and Post() to hand work in from other threads (an eventfd wakes the
// loop). The thread that calls Run() is the loop thread; every method except
// Post() and Stop() must be called on it (or before Run() starts). Callbacks
// run on the loop thread and may add or remove descriptors and timers,
// including their own.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "platform/status.h"
#include "platform/unique_fd.h"

namespace ws {

class EventLoop {
 public:
  // Readiness bits passed to AddFd/ModifyFd and to callbacks.
  static constexpr uint32_t kReadable = 0x001;  // EPOLLIN
  static constexpr uint32_t kWritable = 0x004;  // EPOLLOUT
  static constexpr uint32_t kError = 0x008;     // EPOLLERR (callbacks only)
  static constexpr uint32_t kHangup = 0x010;    // EPOLLHUP (callbacks only)

  using FdCallback = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  static Result<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // The loop does not own `fd`; RemoveFd before closing it.
  Status AddFd(int fd, uint32_t events, FdCallback callback);
  Status ModifyFd(int fd, uint32_t events);
  void RemoveFd(int fd);

  // One-shot timer; `delay_ms` >= 0. Returns an id for CancelTimer.
  TimerId AddTimer(int64_t delay_ms, std::function<void()> callback);
  void CancelTimer(TimerId id);

  // Any thread: runs `fn` on the loop thread soon, in posting order.
  void Post(std::function<void()> fn);

  // Runs until Stop(). Returns an error only if epoll itself fails.
  Status Run();
  // Any thread: makes Run() return after the current iteration.
  void Stop();

  bool InLoopThread() const;

 private:
  struct FdEntry {
    uint32_t generation;
    FdCallback callback;
  };

  EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd);
  void Wake();
  void DrainPosted();
  int NextTimeoutMs() const;
  void RunDueTimers();

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::unordered_map<int, std::shared_ptr<FdEntry>> fds_;
  uint32_t next_generation_ = 1;

  std::map<std::pair<int64_t, TimerId>, std::function<void()>> timers_;  // by deadline
  std::unordered_map<TimerId, int64_t> timer_deadlines_;
  TimerId next_timer_id_ = 1;

  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;  // guarded by post_mu_
  bool stop_requested_ = false;                // guarded by post_mu_

  // 0 until Run() starts; then the id of the running thread.
  std::atomic<uint64_t> loop_thread_{0};
};

}  // namespace ws
