// The backbone link: forwards the outbox to the regional MQTT broker with
// libmosquitto, driven from the platform EventLoop (mosquitto_socket,
// mosquitto_loop_read/write/misc). QoS 1 with a bounded in-flight window;
// of the window, only as many PUBLISHes wait for their PUBACK at once as
// the measured round trips call for (core/publish_limit.h); PUBACK acks the
// event in the outbox; after a reconnect everything not acknowledged is
// sent again, in order.
//
// Events travel per the CloudEvents MQTT binding: binary mode on MQTT 5
// (attributes as User Properties, datacontenttype as Content Type), structured
// JSON on MQTT 3.1.1. A PUBACK reason code that means "never" (not
// authorized, topic invalid, packet too large, payload format invalid) and an
// event larger than the broker's Maximum Packet Size go to the dead-letter
// queue. Other failure codes are transient: the event is handed back to the
// outbox with Outbox::Nack for no earlier than a backoff with full jitter,
// and leasing pauses for that backoff. Should the store refuse the Nack, the
// link waits out the backoff and starts again from the oldest undelivered
// event instead (events after it in the same window may then arrive before
// it; the sequence tells the order).
//
// Fairness: bulk events may fill at most 7/8 of the in-flight window; the
// rest is kept for higher classes, so an event appended during a large bulk
// drain is leased at once (the store hands out the highest class first)
// instead of waiting for the window to empty.
//
// Endpoints: the first is the primary. A failed connect or a lost session
// moves on to the next endpoint after a decorrelated-jitter delay. While on
// another endpoint the link probes the primary with a plain TCP connect
// (non-blocking, on the loop); once the primary has answered every probe for
// return_to_primary_ms, the link stops leasing, publishes its retained
// "offline" state on the secondary, waits for the in-flight PUBACKs (at most
// stop_timeout_ms), disconnects, and only then connects to the primary: it
// never publishes to two brokers at once, and only events still unacknowledged
// at the switch are sent again.
//
// TLS per endpoint (EndpointConfig::tls): CA file or the system's CAs,
// optional client certificate and key (mTLS), ALPN, host name verification.
// A failed handshake is a failed connect (retry and failover as usual) and
// is logged with the TLS library's reason; file contents are never logged.
// libmosquitto 2.0 sends `host` as SNI and checks the certificate against
// it; a different server_name is refused by Create. A user name and a
// password per endpoint; the password comes from a file read at every
// connect (a rotated password applies at the next one) and is never logged.
//
// Reconnect delays start again from the minimum only after a session that
// lasted a minute. A session lost sooner (the broker accepts the node and
// drops it again, or another node with the same client id takes the session
// in turn) keeps the delay growing towards the cap, so such a pair does not
// hammer the broker; three of them within ten minutes raise the
// session_flapping alarm and log an error.
//
// Presence: a retained `{prefix}/state` "online" message on every connect,
// the same topic as Last Will ("offline"), and a retained "offline" on Stop
// and before leaving a secondary for the primary. Without the retain flag
// where the endpoint is configured so (EndpointConfig::retain) or an MQTT 5
// broker says it keeps no retained messages: Retain Available 0 in the
// CONNACK, or a CONNECT refused with 0x9A for its retained Will, which is
// then tried again at once without it.
//
// Host names are looked up on a thread of their own (NameLookup), and for
// TLS endpoints given by name libmosquitto's connect call, which looks the
// name up again, runs off the loop too (ConnectCall).
//
// Limits: MQTT 3.1.1 has no PUBACK reason codes, so a broker that drops a
// refused message there still acknowledges it; nor does it say that it keeps
// no retained messages (set `retain: false` for such an endpoint).
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
#include "platform/clock.h"
#include "platform/event_loop.h"
#include "platform/status.h"

namespace ws {

struct BackboneOptions {
  std::vector<EndpointConfig> endpoints;  // tried in order; the first is the primary
  MqttProtocol protocol = MqttProtocol::kMqtt5;
  std::string client_id;
  std::string topic_prefix;           // expanded ("waystation/plant-7/gw-0001")
  uint32_t keepalive_s = 30;
  uint32_t inflight_window = 512;    // QoS 1 messages published and not yet acknowledged
  // Events the link may hold leased (in flight plus waiting to be
  // published), at least the window: a PUBACK is followed by the next
  // PUBLISH in the same turn instead of after a round trip to the store. A
  // new higher-class event waits for at most one lease, i.e. behind at most
  // this many events published meanwhile.
  uint32_t lease_ahead = 1024;
  std::string version;                // for the birth message
  std::string boot_id;
  int64_t reconnect_min_ms = 200;
  int64_t reconnect_max_ms = 30'000;
  std::string node_id;                // named in the presence messages; default: client_id
  int64_t connect_timeout_ms = 10'000;  // from connect to CONNACK before trying the next endpoint
  int64_t retry_min_ms = 500;         // backoff after a transient PUBACK failure (full jitter)
  int64_t retry_max_ms = 30'000;
  int64_t stop_timeout_ms = 2'000;    // how long Stop (and a return to the primary) waits for in-flight acks
  int64_t return_to_primary_ms = 300'000;     // primary reachable this long -> move back; 0 = stay where it works
  int64_t primary_probe_interval_ms = 5'000;  // TCP probes of the primary while elsewhere (at most return_to_primary_ms)
  // No PUBACK for this long while publishes wait ends the session as lost
  // (reconnect, to the next endpoint if any); 0 = wait as long as the
  // connection lasts.
  int64_t ack_timeout_ms = 60'000;
  // Cap on the bytes of event PUBLISHes sent per second (a metered or slow
  // uplink after an outage); 0 = none. A token bucket of one second's worth:
  // the backlog drains at this rate, highest class first as always.
  // Presence messages are not counted.
  int64_t max_bytes_per_s = 0;
  const Clock* clock = nullptr;  // for the cap; nullptr = SystemClock()
};

enum class LinkState { kDisconnected, kConnecting, kConnected, kStopping, kStopped };

struct BackboneStats {
  LinkState state = LinkState::kDisconnected;
  std::string endpoint;         // name of the current or last endpoint
  uint32_t endpoint_index = 0;  // its position in BackboneOptions::endpoints; 0 = the primary
  uint64_t connects = 0;
  uint64_t disconnects = 0;
  uint64_t failovers = 0;           // moves to another endpoint, returns to the primary included
  uint64_t returns_to_primary = 0;  // planned moves back to the primary after it was reachable long enough
  uint64_t published = 0;
  uint64_t acked = 0;
  uint64_t dead_lettered = 0;
  uint32_t inflight = 0;
  uint64_t connect_failures = 0;    // attempts that never reached CONNACK success
  uint64_t transient_failures = 0;  // PUBACKs with a failure code that is worth retrying
  uint64_t nacked = 0;              // of those, handed back to the outbox with a not-before time
  uint64_t ack_timeouts = 0;        // sessions ended because no PUBACK came within ack_timeout_ms
  uint64_t rate_limit_pauses = 0;   // times publishing waited for max_bytes_per_s
  // Sessions lost within a minute of their CONNACK (not a planned end): a
  // broker that accepts the node and then drops it, or another node with
  // the same client id taking the session in turn.
  uint64_t short_sessions = 0;
  bool session_flapping = false;    // alarm: three or more short sessions within the last ten minutes
  uint32_t window = 0;              // in-flight limit of the current session (ours and the broker's)
  // Of the window, the PUBLISHes that may wait for a PUBACK at once (see
  // core/publish_limit.h), and the session's shortest PUBLISH -> PUBACK
  // round trip; 0 while disconnected.
  uint32_t publish_limit = 0;
  int64_t shortest_round_trip_us = 0;
  uint32_t broker_max_packet = 0;   // the broker's Maximum Packet Size; 0 = none given
  // Why the last connect attempt failed or the last session ended (not a
  // planned end), and when (wall clock, µs); empty / 0 until then. Kept
  // after a later success, so an operator sees what the link last met.
  std::string last_error;
  int64_t last_error_us = 0;
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
