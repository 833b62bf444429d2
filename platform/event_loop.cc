#include "platform/event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <limits>

#include "platform/clock.h"

namespace ws {
namespace {

static_assert(EventLoop::kReadable == EPOLLIN && EventLoop::kWritable == EPOLLOUT &&
              EventLoop::kError == EPOLLERR && EventLoop::kHangup == EPOLLHUP);

uint64_t ThisThreadId() { return static_cast<uint64_t>(pthread_self()); }

uint64_t PackKey(int fd, uint32_t generation) {
  return (uint64_t{generation} << 32) | static_cast<uint32_t>(fd);
}

constexpr int kWakeFdMarker = -2;

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  if (!ep.valid()) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return ErrnoStatus(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = PackKey(kWakeFdMarker, 0);
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0) return ErrnoStatus(errno, "epoll_ctl(eventfd)");
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(ep), std::move(wake)));
}

EventLoop::EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd)
    : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() = default;

Status EventLoop::AddFd(int fd, uint32_t events, FdCallback callback) {
  if (fds_.count(fd) != 0) return AlreadyExists("event loop: fd already registered");
  uint32_t gen = next_generation_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = PackKey(fd, gen);
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoStatus(errno, "epoll_ctl(ADD)");
  fds_[fd] = std::make_shared<FdEntry>(FdEntry{gen, std::move(callback)});
  return Status::Ok();
}

Status EventLoop::ModifyFd(int fd, uint32_t events) {
  auto it = fds_.find(fd);
  if (it == fds_.end()) return NotFound("event loop: fd not registered");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = PackKey(fd, it->second->generation);
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return ErrnoStatus(errno, "epoll_ctl(MOD)");
  return Status::Ok();
}

void EventLoop::RemoveFd(int fd) {
  auto it = fds_.find(fd);
  if (it == fds_.end()) return;
  // EBADF/ENOENT here mean the fd is already gone from the set: nothing to undo.
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  fds_.erase(it);
}

EventLoop::TimerId EventLoop::AddTimer(int64_t delay_ms, std::function<void()> callback) {
  if (delay_ms < 0) delay_ms = 0;
  TimerId id = next_timer_id_++;
  int64_t deadline = SystemClock().MonotonicMillis() + delay_ms;
  timers_.emplace(std::make_pair(deadline, id), std::move(callback));
  timer_deadlines_[id] = deadline;
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_deadlines_.find(id);
  if (it == timer_deadlines_.end()) return;
  timers_.erase({it->second, id});
  timer_deadlines_.erase(it);
}

void EventLoop::Post(std::function<void()> fn) {
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(fn));
  }
  // Only the first of a run of posts needs to wake the loop: DrainPosted
  // reads the counter before it takes the list, so anything added to a list
  // that was not empty is taken with the post that woke it.
  if (was_empty) Wake();
}

void EventLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    stop_requested_ = true;
  }
  Wake();
}

bool EventLoop::InLoopThread() const {
  uint64_t t = loop_thread_.load(std::memory_order_relaxed);
  return t == 0 || t == ThisThreadId();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the loop will wake anyway.
  ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  (void)n;
}

void EventLoop::DrainPosted() {
  uint64_t count = 0;
  ssize_t n = ::read(wake_fd_.get(), &count, sizeof count);
  (void)n;  // EAGAIN: nothing pending on the counter
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

int EventLoop::NextTimeoutMs() const {
  if (timers_.empty()) return -1;
  int64_t wait = timers_.begin()->first.first - SystemClock().MonotonicMillis();
  if (wait <= 0) return 0;
  if (wait > std::numeric_limits<int>::max()) return std::numeric_limits<int>::max();
  return static_cast<int>(wait);
}

void EventLoop::RunDueTimers() {
  int64_t now = SystemClock().MonotonicMillis();
  // Timers added by callbacks (ids from `first_new` on) wait for the next
  // iteration, so a timer that re-arms itself with zero delay cannot starve
  // descriptors. Each due timer is taken off the map only just before it
  // runs, so a callback can still cancel a later timer due in this round.
  // A new timer's deadline is >= `now`, so it sorts after every due timer
  // with a smaller id: meeting one means the round is over.
  const TimerId first_new = next_timer_id_;
  while (!timers_.empty()) {
    auto it = timers_.begin();
    if (it->first.first > now || it->first.second >= first_new) break;
    std::function<void()> fn = std::move(it->second);
    timer_deadlines_.erase(it->first.second);
    timers_.erase(it);
    fn();
  }
}

Status EventLoop::Run() {
  loop_thread_.store(ThisThreadId());
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      if (stop_requested_) {
        stop_requested_ = false;
        break;
      }
    }
    int n = epoll_wait(epoll_fd_.get(), events, kMaxEvents, NextTimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = ErrnoStatus(errno, "epoll_wait");
      loop_thread_.store(0);
      return s;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t key = events[i].data.u64;
      int fd = static_cast<int>(static_cast<uint32_t>(key & 0xffffffffu));
      auto gen = static_cast<uint32_t>(key >> 32);
      if (fd == kWakeFdMarker) {
        DrainPosted();
        continue;
      }
      auto it = fds_.find(fd);
      // The fd may have been removed (or removed and re-added) by an earlier
      // callback in this batch: the generation tells a stale event apart.
      if (it == fds_.end() || it->second->generation != gen) continue;
      std::shared_ptr<FdEntry> entry = it->second;  // survives RemoveFd inside the callback
      entry->callback(events[i].events);
    }
    RunDueTimers();
  }
  // Run what was posted before the stop so no hand-off is silently dropped.
  DrainPosted();
  loop_thread_.store(0);
  return Status::Ok();
}

}  // namespace ws
