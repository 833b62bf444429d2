// Turns process signals into event-loop callbacks through a signalfd, so
// handlers run on the loop thread like any other event (no async-signal
// rules). Create it on the main thread before any other thread starts: it
// blocks SIGTERM, SIGINT and SIGHUP for the process (threads inherit the
// mask) and ignores SIGPIPE (a dead peer becomes EPIPE on write instead).
#pragma once

#include <functional>
#include <memory>

#include "platform/event_loop.h"
#include "platform/status.h"
#include "platform/unique_fd.h"

namespace ws {

class SignalWatcher {
 public:
  struct Handlers {
    std::function<void()> on_stop;    // SIGTERM or SIGINT: stop gracefully
    std::function<void()> on_reload;  // SIGHUP: reload the configuration
  };

  // Registers with `loop`, which must outlive the watcher.
  static Result<std::unique_ptr<SignalWatcher>> Create(EventLoop* loop, Handlers handlers);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  SignalWatcher(EventLoop* loop, UniqueFd fd, Handlers handlers);
  void OnReadable();

  EventLoop* loop_;
  UniqueFd fd_;
  Handlers handlers_;
};

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and ignores
// SIGPIPE; SignalWatcher::Create calls it. Exposed for threads created
// before the watcher.
Status BlockProcessSignals();

}  // namespace ws
