// A reachability check for a broker endpoint: does host:port accept a TCP
// connection right now? The backbone link uses it while it is on a secondary
// endpoint, to learn when the primary is back, without speaking MQTT there
// (no second session, nothing published to a second broker).
//
// The connect is non-blocking and watched by the event loop, bounded by a
// timeout. A host that is not an IP literal is resolved off the loop
// (name_lookup.h), so a slow or absent DNS server never stalls it.
//
// Threads: construct, Start, Cancel and destroy on the loop thread. `done`
// runs on the loop thread, never inside Start, and not at all after Cancel or
// destruction.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "platform/event_loop.h"
#include "platform/status.h"

namespace ws {

class TcpProbe {
 public:
  // OK: a connection was accepted (and closed again at once).
  using Done = std::function<void(Status)>;

  // `loop` must outlive the probe.
  explicit TcpProbe(EventLoop* loop);
  ~TcpProbe();
  TcpProbe(const TcpProbe&) = delete;
  TcpProbe& operator=(const TcpProbe&) = delete;

  // Starts one probe; one still running is cancelled first. `timeout_ms`
  // bounds the lookup and the connect together.
  void Start(const std::string& host, uint16_t port, int64_t timeout_ms, Done done);
  void Cancel();
  bool running() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ws
