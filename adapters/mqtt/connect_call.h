// Runs libmosquitto's connect call for a client on a thread of its own and
// hands the client back on the loop.
//
// Over TLS the library must be given the broker's host name, not an address:
// it sends the name (SNI) and checks the certificate against it. It then
// looks the name up inside mosquitto_connect_bind_async, with a getaddrinfo
// that blocks for as long as the DNS server takes. The link resolves every
// name off the loop first (NameLookup), but that answer cannot be handed
// over, and the second lookup is a second chance for a lossy network to
// stall: seconds of a frozen local API. So that call runs here.
//
// One call at a time: Busy() says whether one is still running (its caller
// may have given up on it; a DNS server that never answers then costs one
// waiting thread, not one per reconnect attempt).
//
// While the call runs, the thread owns the client: it swaps the client's
// user data and log callback for its own (only the log callback can fire
// inside the connect call) and clears both again before it hands the client
// back, so nothing of the caller runs on that thread. The caller sets its
// own again when it takes the client.
//
// Threads: construct, Start and destroy on the loop thread. `done` runs on
// the loop thread, never inside Start, and not at all after destruction; a
// call still running then destroys its client on its own thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adapters/mqtt/mosquitto_api.h"
#include "platform/event_loop.h"

namespace ws {

class ConnectCall {
 public:
  struct Outcome {
    MosquittoClient client;
    int rc = 0;  // what mosquitto_connect_bind_async returned
    // The error and warning lines the library logged during the call.
    std::vector<std::string> library_errors;
  };
  using Done = std::function<void(Outcome)>;

  // `loop` must outlive this object.
  explicit ConnectCall(EventLoop* loop);
  ~ConnectCall();
  ConnectCall(const ConnectCall&) = delete;
  ConnectCall& operator=(const ConnectCall&) = delete;

  // Starts mosquitto_connect_bind_async(client, host, port, keepalive_s).
  // Not while Busy(). If no thread can be started, `done` gets the client
  // back with MOSQ_ERR_ERRNO (errno set on the loop thread when it runs).
  void Start(MosquittoClient client, const std::string& host, int port, int keepalive_s, Done done);
  bool Busy() const { return busy_; }

 private:
  struct Shared;
  struct Job;
  struct AliveToken {};
  static void* Thread(void* arg);

  EventLoop* const loop_;
  const std::shared_ptr<Shared> shared_;
  std::shared_ptr<AliveToken> alive_ = std::make_shared<AliveToken>();
  bool busy_ = false;
};

}  // namespace ws
