#include "adapters/mqtt/name_lookup.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>

#include <cstring>
#include <mutex>
#include <set>
#include <utility>

namespace ws {

std::optional<SocketAddress> ParseAddressLiteral(const std::string& host, uint16_t port) {
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  SocketAddress out;
  sockaddr_in v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    std::memcpy(&out.storage, &v4, sizeof v4);
    out.length = sizeof v4;
    return out;
  }
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    std::memcpy(&out.storage, &v6, sizeof v6);
    out.length = sizeof v6;
    return out;
  }
  return std::nullopt;
}

std::string NumericHost(const SocketAddress& address) {
  char text[INET6_ADDRSTRLEN] = {};
  const void* raw = nullptr;
  if (address.storage.ss_family == AF_INET) {
    raw = &reinterpret_cast<const sockaddr_in*>(&address.storage)->sin_addr;
  } else if (address.storage.ss_family == AF_INET6) {
    raw = &reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_addr;
  }
  if (raw == nullptr || inet_ntop(address.storage.ss_family, raw, text, sizeof text) == nullptr) return "";
  return text;
}

class NameLookup::Impl {
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

  void Start(const std::string& host, uint16_t port, Done done) {
    Cancel();
    done_ = std::move(done);
    waiting_for_ = host + " " + std::to_string(port);
    const uint64_t generation = generation_;
    if (std::optional<SocketAddress> literal = ParseAddressLiteral(host, port)) {
      FinishSoon(generation, std::vector<SocketAddress>{*literal});
      return;
    }
    // A thread still asking for the same name answers this Start too (see
    // OnThreadDone).
    if (threads_.count(waiting_for_) > 0) return;
    auto job = std::make_unique<Job>();
    job->shared = shared_;
    job->alive = alive_;
    job->owner = this;
    job->host = host;
    job->port = port;
    job->key = waiting_for_;
    pthread_t thread;
    // The thread owns the job from here on, if it starts.
    Job* raw = job.release();
    const int rc = pthread_create(&thread, nullptr, &Impl::Thread, raw);
    if (rc != 0) {
      job.reset(raw);
      FinishSoon(generation, ErrnoStatus(rc, "start a name lookup thread"));
      return;
    }
    // Nobody waits for it: it posts its answer (or finds the lookup gone) and ends.
    pthread_detach(thread);
    threads_.insert(waiting_for_);
  }

  void Cancel() {
    ++generation_;
    done_ = nullptr;
  }

 private:
  // What a lookup thread may touch after the lookup is gone: the loop
  // pointer (cleared by the destructor) behind a mutex. The loop outlives
  // the lookup, so a post made while the pointer is set reaches a live loop;
  // the posted task then checks `alive` on the loop thread.
  struct Shared {
    std::mutex mu;
    EventLoop* loop = nullptr;
  };
  struct AliveToken {};
  struct Job {
    std::shared_ptr<Shared> shared;
    std::weak_ptr<AliveToken> alive;
    Impl* owner = nullptr;
    std::string host;
    uint16_t port = 0;
    std::string key;  // host and port, as in threads_
  };

  static void* Thread(void* arg) {
    // Ownership of the job came through pthread_create's void*.
    std::unique_ptr<Job> job(static_cast<Job*>(arg));
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(job->port);
    const int rc = getaddrinfo(job->host.c_str(), service.c_str(), &hints, &found);
    Result<std::vector<SocketAddress>> result = std::vector<SocketAddress>{};
    if (rc != 0) {
      result = Unavailable("name lookup of " + job->host + ": " + gai_strerror(rc));
    } else {
      std::vector<SocketAddress> addresses;
      for (const addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        SocketAddress a;
        std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
        a.length = ai->ai_addrlen;
        addresses.push_back(a);
      }
      freeaddrinfo(found);
      if (addresses.empty()) {
        result = Unavailable("name lookup of " + job->host + ": no address");
      } else {
        result = std::move(addresses);
      }
    }
    std::lock_guard<std::mutex> lock(job->shared->mu);
    if (job->shared->loop != nullptr) {
      job->shared->loop->Post(
          [alive = job->alive, owner = job->owner, key = std::move(job->key), result = std::move(result)]() mutable {
            if (alive.lock()) owner->OnThreadDone(key, std::move(result));
          });
    }
    return nullptr;
  }

  // The thread's answer goes to whoever waits for that name now: the Start
  // that began it or a later one for the same name.
  void OnThreadDone(const std::string& key, Result<std::vector<SocketAddress>> result) {
    threads_.erase(key);
    if (done_ == nullptr || waiting_for_ != key) return;
    Done done = std::exchange(done_, nullptr);
    ++generation_;
    if (done) done(std::move(result));
  }

  // `done` never runs inside Start.
  void FinishSoon(uint64_t generation, Result<std::vector<SocketAddress>> result) {
    std::weak_ptr<AliveToken> alive = alive_;
    loop_->Post([this, alive, generation, result = std::move(result)]() mutable {
      if (!alive.lock() || generation != generation_) return;
      Done done = std::exchange(done_, nullptr);
      ++generation_;
      if (done) done(std::move(result));
    });
  }

  EventLoop* const loop_;
  const std::shared_ptr<Shared> shared_;
  std::shared_ptr<AliveToken> alive_ = std::make_shared<AliveToken>();
  uint64_t generation_ = 0;  // bumped by every Start, Cancel and answer; late answers of older ones are dropped
  Done done_;
  std::set<std::string> threads_;  // the names ("host port") lookup threads are asking for
  std::string waiting_for_;        // the name done_ waits for
};

NameLookup::NameLookup(EventLoop* loop) : impl_(std::make_unique<Impl>(loop)) {}
NameLookup::~NameLookup() = default;

void NameLookup::Start(const std::string& host, uint16_t port, Done done) {
  impl_->Start(host, port, std::move(done));
}
void NameLookup::Cancel() { impl_->Cancel(); }

}  // namespace ws
