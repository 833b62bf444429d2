#include "platform/signals.h"

#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>

#include <cerrno>

namespace ws {
namespace {

sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

Status BlockProcessSignals() {
  sigset_t set = HandledSignals();
  int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr);
  if (rc != 0) return ErrnoStatus(rc, "pthread_sigmask");
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  if (sigaction(SIGPIPE, &ign, nullptr) != 0) return ErrnoStatus(errno, "sigaction(SIGPIPE)");
  return Status::Ok();
}

Result<std::unique_ptr<SignalWatcher>> SignalWatcher::Create(EventLoop* loop, Handlers handlers) {
  WS_TRY(BlockProcessSignals());
  sigset_t set = HandledSignals();
  UniqueFd fd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "signalfd");
  int raw = fd.get();
  std::unique_ptr<SignalWatcher> w(new SignalWatcher(loop, std::move(fd), std::move(handlers)));
  SignalWatcher* self = w.get();
  WS_TRY(loop->AddFd(raw, EventLoop::kReadable, [self](uint32_t) { self->OnReadable(); }));
  return w;
}

SignalWatcher::SignalWatcher(EventLoop* loop, UniqueFd fd, Handlers handlers)
    : loop_(loop), fd_(std::move(fd)), handlers_(std::move(handlers)) {}

SignalWatcher::~SignalWatcher() {
  if (fd_.valid()) loop_->RemoveFd(fd_.get());
}

void SignalWatcher::OnReadable() {
  for (;;) {
    signalfd_siginfo info{};
    ssize_t n = ::read(fd_.get(), &info, sizeof info);
    if (n != static_cast<ssize_t>(sizeof info)) return;  // EAGAIN: drained
    switch (info.ssi_signo) {
      case SIGTERM:
      case SIGINT:
        if (handlers_.on_stop) handlers_.on_stop();
        break;
      case SIGHUP:
        if (handlers_.on_reload) handlers_.on_reload();
        break;
      default:
        break;
    }
  }
}

}  // namespace ws
