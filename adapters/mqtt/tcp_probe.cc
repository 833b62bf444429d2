#include "adapters/mqtt/tcp_probe.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "platform/unique_fd.h"

namespace ws {
namespace {

struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

// An IPv4 or IPv6 literal ("[::1]" too) becomes an address without a lookup.
bool ParseLiteral(const std::string& host, uint16_t port, Address* out) {
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  sockaddr_in v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    std::memcpy(&out->storage, &v4, sizeof v4);
    out->length = sizeof v4;
    return true;
  }
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    std::memcpy(&out->storage, &v6, sizeof v6);
    out->length = sizeof v6;
    return true;
  }
  return false;
}

}  // namespace

class TcpProbe::Impl {
 public:
  explicit Impl(EventLoop* loop) : loop_(loop), shared_(std::make_shared<Shared>()) { shared_->loop = loop; }

  ~Impl() {
    Cancel();
    // A lookup thread still running finds no loop and drops its answer.
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->loop = nullptr;
  }

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
    Address literal;
    if (ParseLiteral(host, port, &literal)) {
      addresses_.push_back(literal);
      TryNext();
      return;
    }
    if (lookup_running_) {
      FinishSoon(Unavailable("the previous name lookup of " + host + " is still running"));
      return;
    }
    StartLookup(host, port, generation);
  }

  void Cancel() {
    ++generation_;
    done_ = nullptr;
    if (timer_ != 0) loop_->CancelTimer(timer_);
    timer_ = 0;
    CloseSocket();
    addresses_.clear();
    next_address_ = 0;
  }

  bool running() const { return done_ != nullptr; }

 private:
  // What a lookup thread may touch after the probe is gone: the loop pointer
  // (cleared by the destructor) behind a mutex. The loop outlives the probe,
  // so a post made while the pointer is set reaches a live loop; the posted
  // task then checks `alive` on the loop thread.
  struct Shared {
    std::mutex mu;
    EventLoop* loop = nullptr;
  };
  struct AliveToken {};
  struct LookupJob {
    std::shared_ptr<Shared> shared;
    std::weak_ptr<AliveToken> alive;
    Impl* probe = nullptr;
    std::string host;
    uint16_t port = 0;
    uint64_t generation = 0;
  };

  static void* LookupThread(void* arg) {
    // Ownership of the job came through pthread_create's void*.
    std::unique_ptr<LookupJob> job(static_cast<LookupJob*>(arg));
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(job->port);
    const int rc = getaddrinfo(job->host.c_str(), service.c_str(), &hints, &found);
    std::vector<Address> addresses;
    std::string error;
    if (rc != 0) {
      error = std::string("name lookup of ") + job->host + ": " + gai_strerror(rc);
    } else {
      for (const addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        Address a;
        std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
        a.length = ai->ai_addrlen;
        addresses.push_back(a);
      }
      freeaddrinfo(found);
    }
    std::lock_guard<std::mutex> lock(job->shared->mu);
    if (job->shared->loop != nullptr) {
      job->shared->loop->Post([alive = job->alive, probe = job->probe, generation = job->generation,
                               addresses = std::move(addresses), error = std::move(error)]() mutable {
        if (alive.lock()) probe->OnLookupDone(generation, std::move(addresses), error);
      });
    }
    return nullptr;
  }

  void StartLookup(const std::string& host, uint16_t port, uint64_t generation) {
    auto job = std::make_unique<LookupJob>();
    job->shared = shared_;
    job->alive = alive_;
    job->probe = this;
    job->host = host;
    job->port = port;
    job->generation = generation;
    pthread_t thread;
    // The thread owns the job from here on, if it starts.
    LookupJob* raw = job.release();
    const int rc = pthread_create(&thread, nullptr, &Impl::LookupThread, raw);
    if (rc != 0) {
      job.reset(raw);
      FinishSoon(ErrnoStatus(rc, "start a name lookup thread"));
      return;
    }
    // Nobody waits for it: it posts its answer (or finds the probe gone) and ends.
    pthread_detach(thread);
    lookup_running_ = true;
  }

  void OnLookupDone(uint64_t generation, std::vector<Address> addresses, const std::string& error) {
    lookup_running_ = false;
    if (generation != generation_ || done_ == nullptr) return;
    if (!error.empty()) {
      Finish(Unavailable(error));
      return;
    }
    if (addresses.empty()) {
      Finish(Unavailable("no address for " + label_));
      return;
    }
    addresses_ = std::move(addresses);
    next_address_ = 0;
    TryNext();
  }

  // Tries the addresses in order until one accepts; the last error stands
  // for all of them.
  void TryNext() {
    while (next_address_ < addresses_.size()) {
      const Address& a = addresses_[next_address_++];
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
  const std::shared_ptr<Shared> shared_;
  std::shared_ptr<AliveToken> alive_ = std::make_shared<AliveToken>();
  uint64_t generation_ = 0;  // bumped by every Start and Cancel; late news of older probes is dropped
  Done done_;
  std::string label_;
  EventLoop::TimerId timer_ = 0;
  std::vector<Address> addresses_;
  size_t next_address_ = 0;
  UniqueFd socket_;
  Status last_error_;
  bool lookup_running_ = false;
};

TcpProbe::TcpProbe(EventLoop* loop) : impl_(std::make_unique<Impl>(loop)) {}
TcpProbe::~TcpProbe() = default;

void TcpProbe::Start(const std::string& host, uint16_t port, int64_t timeout_ms, Done done) {
  impl_->Start(host, port, timeout_ms, std::move(done));
}
void TcpProbe::Cancel() { impl_->Cancel(); }
bool TcpProbe::running() const { return impl_->running(); }

}  // namespace ws
