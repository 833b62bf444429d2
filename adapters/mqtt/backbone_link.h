// The backbone link: forwards the outbox to the regional MQTT broker with
// libmosquitto, driven from the platform EventLoop (mosquitto_socket,
// mosquitto_loop_read/write/misc). QoS 1 with a bounded in-flight window;
// PUBACK acks the event in the outbox; after a reconnect everything not
// acknowledged is sent again, in order.
//
// Events travel per the CloudEvents MQTT binding: binary mode on MQTT 5
// (attributes as User Properties, datacontenttype as Content Type), structured
// JSON on MQTT 3.1.1. A PUBACK reason code that means "never" (not
// authorized, topic invalid, packet too large, payload format invalid) and an
// event larger than the broker's Maximum Packet Size go to the dead-letter
// queue; other failure codes are retried after a backoff with full jitter,
// starting again from the oldest undelivered event (events after it in the
// same window may then arrive before it; the sequence tells the order).
// Presence: a retained `{prefix}/state` "online" message on every connect,
// the same topic as Last Will ("offline"), and a retained "offline" on Stop.
//
// Not there yet: TLS to the broker; returning to the primary endpoint after
// it has been stable (the link stays on the endpoint that works and moves on
// only when it fails); host names are resolved by libmosquitto with a
// blocking lookup on the loop thread (use IP addresses where that matters);
// MQTT 3.1.1 has no PUBACK reason codes, so a broker that drops a refused
// message there still acknowledges it.
//
// Threads: Create, Start, Stop, Stats and the destructor run on the loop
// thread. NotifyAppended may be called from any thread (it posts to the loop)
// while the link exists. libmosquitto callbacks run inside
// mosquitto_loop_read/write/misc, i.e. on the loop thread; outbox completions
// arrive on the store's thread and are posted back to the loop.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
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
  std::string node_id;                // named in the presence messages; default: client_id
  int64_t connect_timeout_ms = 10'000;  // from connect to CONNACK before trying the next endpoint
  int64_t retry_min_ms = 500;         // backoff after a transient PUBACK failure (full jitter)
  int64_t retry_max_ms = 30'000;
  int64_t stop_timeout_ms = 2'000;    // how long Stop waits for the offline state and in-flight acks
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
  uint64_t connect_failures = 0;    // attempts that never reached CONNACK success
  uint64_t transient_failures = 0;  // PUBACKs with a failure code that is worth retrying
  uint32_t window = 0;              // in-flight limit of the current session (ours and the broker's)
  uint32_t broker_max_packet = 0;   // the broker's Maximum Packet Size; 0 = none given
};

std::string_view LinkStateName(LinkState state);

class BackboneLink {
 public:
  // `loop` and `outbox` must outlive the link.
  static Result<std::unique_ptr<BackboneLink>> Create(EventLoop* loop, Outbox* outbox, BackboneOptions options);
  // Without a finished Stop this drops the connection without DISCONNECT, so
  // the broker publishes the Will, and gives every lease back to the outbox.
  ~BackboneLink();
  BackboneLink(const BackboneLink&) = delete;
  BackboneLink& operator=(const BackboneLink&) = delete;

  // Begins connecting (non-blocking); reconnects by itself from then on.
  void Start();
  // Graceful stop: publishes the retained "offline" state, waits briefly for
  // in-flight acks, disconnects; `done` runs on the loop thread when finished
  // (not at all if the link is destroyed first).
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
