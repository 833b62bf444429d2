// The backbone link: forwards the outbox to the regional MQTT broker with
// libmosquitto, driven from the platform EventLoop (mosquitto_socket,
// mosquitto_loop_read/write/misc). QoS 1 with a bounded in-flight window;
// PUBACK acks the event in the outbox; after a reconnect everything not
// acknowledged is sent again, in order.
//
// Threads: Create, Start, Stop and Stats run on the loop thread.
// NotifyAppended may be called from any thread (it posts to the loop).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/outbox.h"
#include "platform/event_loop.h"
#include "platform/status.h"

namespace ws {

struct BackboneOptions {
  std::vector<EndpointConfig> endpoints;  // tried in order; the first is the primary
  MqttProtocol protocol = MqttProtocol::kMqtt5;
  std::string client_id;
  std::string topic_prefix;           // expanded ("waystation/plant-7/gw-0001")
  uint32_t keepalive_s = 30;
  uint32_t inflight_window = 1000;    // QoS 1 messages published and not yet acknowledged
  std::string version;                // for the birth message
  std::string boot_id;
  int64_t reconnect_min_ms = 200;
  int64_t reconnect_max_ms = 30'000;
};

enum class LinkState { kDisconnected, kConnecting, kConnected, kStopping, kStopped };

struct BackboneStats {
  LinkState state = LinkState::kDisconnected;
  std::string endpoint;  // name of the current or last endpoint
  uint64_t connects = 0;
  uint64_t disconnects = 0;
  uint64_t failovers = 0;
  uint64_t published = 0;
  uint64_t acked = 0;
  uint64_t dead_lettered = 0;
  uint32_t inflight = 0;
};

std::string_view LinkStateName(LinkState state);

class BackboneLink {
 public:
  // `loop` and `outbox` must outlive the link.
  static Result<std::unique_ptr<BackboneLink>> Create(EventLoop* loop, Outbox* outbox, BackboneOptions options);
  ~BackboneLink();
  BackboneLink(const BackboneLink&) = delete;
  BackboneLink& operator=(const BackboneLink&) = delete;

  // Begins connecting (non-blocking); reconnects by itself from then on.
  void Start();
  // Graceful stop: publishes the retained "offline" state, waits briefly for
  // in-flight acks, disconnects; `done` runs on the loop thread when finished.
  void Stop(std::function<void()> done);
  // Any thread: the outbox has new events.
  void NotifyAppended();

  BackboneStats Stats() const;

 private:
  class Impl;
  explicit BackboneLink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Calls mosquitto_lib_init once per process (thread-safe); returns the
// library version as "2.0.11".
std::string MosquittoLibraryVersion();

}  // namespace ws
