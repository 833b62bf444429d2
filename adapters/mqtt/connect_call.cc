#include "adapters/mqtt/connect_call.h"

#include <pthread.h>

#include <cerrno>
#include <mutex>
#include <utility>

namespace ws {

namespace {

// Enough to name the reason; the library repeats itself after that.
constexpr size_t kMaxLibraryErrors = 4;  // as many as the link keeps

}  // namespace

// What the thread may touch after the ConnectCall is gone: the loop pointer
// (cleared by the destructor) behind a mutex. The loop outlives the
// ConnectCall, so a post made while the pointer is set reaches a live loop;
// the posted task then checks `alive` on the loop thread.
struct ConnectCall::Shared {
  std::mutex mu;
  EventLoop* loop = nullptr;
};

struct ConnectCall::Job {
  std::shared_ptr<Shared> shared;
  std::weak_ptr<AliveToken> alive;
  ConnectCall* owner = nullptr;
  Done done;
  std::string host;
  int port = 0;
  int keepalive_s = 0;
  Outcome outcome;

  static void OnLog(mosquitto*, void* self, int level, const char* message) {
    if ((level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) == 0 || message == nullptr) return;
    Job* job = static_cast<Job*>(self);
    if (job->outcome.library_errors.size() < kMaxLibraryErrors) job->outcome.library_errors.emplace_back(message);
  }
};

ConnectCall::ConnectCall(EventLoop* loop) : loop_(loop), shared_(std::make_shared<Shared>()) { shared_->loop = loop; }

ConnectCall::~ConnectCall() {
  // A thread still in the call finds no loop and destroys its client itself.
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->loop = nullptr;
}

void ConnectCall::Start(MosquittoClient client, const std::string& host, int port, int keepalive_s, Done done) {
  auto job = std::make_unique<Job>();
  job->shared = shared_;
  job->alive = alive_;
  job->owner = this;
  job->done = std::move(done);
  job->host = host;
  job->port = port;
  job->keepalive_s = keepalive_s;
  job->outcome.client = std::move(client);
  busy_ = true;
  pthread_t thread;
  // The thread owns the job from here on, if it starts.
  Job* raw = job.release();
  const int rc = pthread_create(&thread, nullptr, &ConnectCall::Thread, raw);
  if (rc != 0) {
    job.reset(raw);
    job->outcome.rc = MOSQ_ERR_ERRNO;
    std::weak_ptr<AliveToken> alive = alive_;
    // `done` never runs inside Start.
    loop_->Post([alive, this, rc, job = std::shared_ptr<Job>(std::move(job))] {
      if (!alive.lock()) return;
      busy_ = false;
      errno = rc;
      job->done(std::move(job->outcome));
    });
    return;
  }
  // Nobody waits for it: it posts its outcome (or finds the owner gone) and ends.
  pthread_detach(thread);
}

void* ConnectCall::Thread(void* arg) {
  // Ownership of the job came through pthread_create's void*.
  std::unique_ptr<Job> job(static_cast<Job*>(arg));
  mosquitto* m = job->outcome.client.get();
  mosquitto_user_data_set(m, job.get());
  mosquitto_log_callback_set(m, &Job::OnLog);
  job->outcome.rc = mosquitto_connect_bind_async(m, job->host.c_str(), job->port, job->keepalive_s, nullptr);
  const int saved_errno = errno;
  mosquitto_log_callback_set(m, nullptr);
  mosquitto_user_data_set(m, nullptr);
  std::lock_guard<std::mutex> lock(job->shared->mu);
  if (job->shared->loop == nullptr) return nullptr;  // the job, and its client, end here
  EventLoop* loop = job->shared->loop;
  loop->Post([saved_errno, job = std::shared_ptr<Job>(std::move(job))] {
    if (!job->alive.lock()) return;  // the client is destroyed with the task
    job->owner->busy_ = false;
    errno = saved_errno;
    job->done(std::move(job->outcome));
  });
  return nullptr;
}

}  // namespace ws
