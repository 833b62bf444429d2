#include "adapters/mqtt/tcp_probe.h"

#include <sys/socket.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "adapters/mqtt/name_lookup.h"
#include "platform/unique_fd.h"

namespace ws {

class TcpProbe::Impl {
 public:
  explicit Impl(EventLoop* loop) : loop_(loop), lookup_(loop) {}

  ~Impl() { Cancel(); }

  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void Start(const std::string& host, uint16_t port, int64_t timeout_ms, Done done) {
    Cancel();
    const uint64_t generation = ++generation_;
    done_ = std::move(done);
    last_error_ = Status::Ok();
    label_ = host + ":" + std::to_string(port);
    timer_ = loop_->AddTimer(timeout_ms, [this, generation] {
      timer_ = 0;
      if (generation == generation_) {
        Finish(Status(StatusCode::kDeadlineExceeded, "no TCP connection to " + label_ + " within the probe timeout"));
      }
    });
    lookup_.Start(host, port, [this, generation](Result<std::vector<SocketAddress>> addresses) {
      OnLookupDone(generation, std::move(addresses));
    });
  }

  void Cancel() {
    ++generation_;
    done_ = nullptr;
    lookup_.Cancel();
    if (timer_ != 0) loop_->CancelTimer(timer_);
    timer_ = 0;
    CloseSocket();
    addresses_.clear();
    next_address_ = 0;
  }

  bool running() const { return done_ != nullptr; }

 private:
  struct AliveToken {};

  void OnLookupDone(uint64_t generation, Result<std::vector<SocketAddress>> addresses) {
    if (generation != generation_ || done_ == nullptr) return;
    if (!addresses.ok()) {
      Finish(addresses.status());
      return;
    }
    addresses_ = std::move(addresses).value();
    next_address_ = 0;
    TryNext();
  }

  // Tries the addresses in order until one accepts; the last error stands
  // for all of them.
  void TryNext() {
    while (next_address_ < addresses_.size()) {
      const SocketAddress& a = addresses_[next_address_++];
      UniqueFd fd(socket(a.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd.valid()) {
        last_error_ = ErrnoStatus(errno, "socket for " + label_);
        continue;
      }
      if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&a.storage), a.length) == 0) {
        FinishSoon(Status::Ok());
        return;
      }
      if (errno != EINPROGRESS) {
        last_error_ = ErrnoStatus(errno, "connect to " + label_);
        continue;
      }
      const uint64_t generation = generation_;
      Status s = loop_->AddFd(fd.get(), EventLoop::kWritable,
                              [this, generation](uint32_t) { OnConnectReady(generation); });
      if (!s.ok()) {
        last_error_ = s;
        continue;
      }
      socket_ = std::move(fd);
      return;
    }
    FinishSoon(last_error_.ok() ? Unavailable("no address of " + label_ + " accepted a connection") : last_error_);
  }

  void OnConnectReady(uint64_t generation) {
    if (generation != generation_ || !socket_.valid()) return;
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(socket_.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
    CloseSocket();
    if (error == 0) {
      Finish(Status::Ok());
      return;
    }
    last_error_ = ErrnoStatus(error, "connect to " + label_);
    TryNext();
  }

  void CloseSocket() {
    if (!socket_.valid()) return;
    loop_->RemoveFd(socket_.get());
    socket_.Reset();
  }

  // `done` never runs inside Start.
  void FinishSoon(Status s) {
    const uint64_t generation = generation_;
    std::weak_ptr<AliveToken> alive = alive_;
    loop_->Post([this, alive, generation, s = std::move(s)]() mutable {
      if (alive.lock() && generation == generation_) Finish(std::move(s));
    });
  }

  void Finish(Status s) {
    Done done = std::exchange(done_, nullptr);
    Cancel();
    if (done) done(std::move(s));
  }

  EventLoop* const loop_;
  NameLookup lookup_;
  std::shared_ptr<AliveToken> alive_ = std::make_shared<AliveToken>();
  uint64_t generation_ = 0;  // bumped by every Start and Cancel; late news of older probes is dropped
  Done done_;
  std::string label_;
  EventLoop::TimerId timer_ = 0;
  std::vector<SocketAddress> addresses_;
  size_t next_address_ = 0;
  UniqueFd socket_;
  Status last_error_;
};

TcpProbe::TcpProbe(EventLoop* loop) : impl_(std::make_unique<Impl>(loop)) {}
TcpProbe::~TcpProbe() = default;

void TcpProbe::Start(const std::string& host, uint16_t port, int64_t timeout_ms, Done done) {
  impl_->Start(host, port, timeout_ms, std::move(done));
}
void TcpProbe::Cancel() { impl_->Cancel(); }
bool TcpProbe::running() const { return impl_->running(); }

}  // namespace ws
