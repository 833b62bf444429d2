#include "adapters/mqtt/backbone_link.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "adapters/mqtt/cloudevents_mqtt.h"
#include "adapters/mqtt/connect_call.h"
#include "adapters/mqtt/mosquitto_api.h"
#include "adapters/mqtt/name_lookup.h"
#include "adapters/mqtt/tcp_probe.h"
#include "core/publish_limit.h"
#include "core/rate_limiter.h"
#include "platform/clock.h"
#include "platform/file_system.h"
#include "platform/log.h"
#include "platform/unique_fd.h"

namespace ws {
namespace {

constexpr std::string_view kLog = "backbone";
// Acks gathered before one outbox call. Each call is a store transaction
// that writes every page it changed, so larger ones write less per event:
// in twelve outage drains of 200,000 events each, 256 instead of 64 wrote
// 638-709 bytes per event instead of 750-791, and the store's thread used
// 9-18 % less CPU (the hold below still ends a batch that fills slower).
constexpr size_t kAckBatch = 256;
constexpr int64_t kAckHoldMs = 2;             // longest a turn leaves fewer acks for the next PUBACKs (HoldOrFlushAcks)
constexpr int64_t kMiscIntervalMs = 1000;     // mosquitto_loop_misc: keepalive pings
constexpr int64_t kDisconnectGraceMs = 1000;  // after DISCONNECT, before giving up on a clean close
constexpr int64_t kLeaseErrorRetryMs = 1000;  // the store failed a Lease: ask again after this
constexpr uint32_t kMaxWindow = 65535;        // Receive Maximum is a two-byte integer
constexpr size_t kMaxMqttString = 65535;      // an MQTT string's (or password's) two-byte length
constexpr uint64_t kMaxPayloadBytes = 268'435'455;  // the largest MQTT remaining length
constexpr int kQos1 = 1;
constexpr int kVerifyPeer = 1;                // SSL_VERIFY_PEER, without including OpenSSL
constexpr int64_t kMinProbeIntervalMs = 50;
// A capped link waits at least this long once the bucket is empty, then
// sends what has gathered in one run: tens of wake-ups a second, not one
// per event.
constexpr int64_t kRateLimitMinWaitMs = 20;
// A session lost sooner than this after its CONNACK is short: the reconnect
// delay keeps growing across it. Three short ones within the window raise
// the session_flapping alarm.
constexpr int64_t kStableSessionMs = 60'000;
constexpr int64_t kFlappingWindowMs = 10 * 60'000;
constexpr int64_t kNackPollMs = 1000;         // a short lease while nacked events are due: look again after this
constexpr int64_t kNackPollWindowMs = 60'000;  // ... for this long past the last not-before time
constexpr size_t kMaxLibraryErrors = 4;       // TLS library messages kept to explain a failed connect
// Debian's system trust store as a CA directory: libmosquitto 2.0 takes a
// client certificate only together with a CA file or directory.
constexpr char kSystemCaDir[] = "/etc/ssl/certs";

std::string EndpointLabel(const EndpointConfig& ep) {
  if (!ep.name.empty()) return ep.name;
  return ep.host + ":" + std::to_string(ep.port);
}

Status ValidateOptions(const EventLoop* loop, const Outbox* outbox, const BackboneOptions& o) {
  if (loop == nullptr || outbox == nullptr) return InvalidArgument("backbone: loop and outbox are required");
  if (o.endpoints.empty()) return InvalidArgument("backbone: at least one endpoint is required");
  for (size_t i = 0; i < o.endpoints.size(); ++i) {
    const EndpointConfig& ep = o.endpoints[i];
    if (ep.host.empty() || ep.port == 0) {
      return InvalidArgument("backbone: endpoint " + std::to_string(i) + " needs a host and a port");
    }
    if (!ep.password_file.empty() && ep.username.empty()) {
      return InvalidArgument("backbone: endpoint " + std::to_string(i) + " has a password_file without a username");
    }
    if (ep.username.size() > kMaxMqttString) {
      return InvalidArgument("backbone: endpoint " + std::to_string(i) + " username is longer than 65535 bytes");
    }
    if (!ep.tls.enabled) continue;
    const std::string key = "backbone: endpoint " + std::to_string(i) + " tls: ";
    if (ep.tls.cert_file.empty() != ep.tls.key_file.empty()) {
      return InvalidArgument(key + "cert_file and key_file go together");
    }
    if (ep.tls.alpn.size() > 254 || ep.tls.alpn.find('\0') != std::string::npos) {
      return InvalidArgument(key + "alpn must be one protocol name of at most 254 characters");
    }
    if (!ep.tls.server_name.empty() && ep.tls.server_name != ep.host) {
      return InvalidArgument(key +
                             "server_name must be empty or equal to host: libmosquitto 2.0 sends host as the "
                             "TLS server name and checks the certificate against it");
    }
  }
  if (o.client_id.empty()) return InvalidArgument("backbone: client_id is required");
  if (o.topic_prefix.empty() || o.topic_prefix.find_first_of("+#") != std::string::npos) {
    return InvalidArgument("backbone: topic_prefix must be a non-empty topic without wildcards");
  }
  if (o.inflight_window == 0) return InvalidArgument("backbone: inflight_window must be at least 1");
  if (o.max_bytes_per_s < 0) return InvalidArgument("backbone: max_bytes_per_s must be 0 (no cap) or more");
  if (o.keepalive_s != 0 && (o.keepalive_s < 5 || o.keepalive_s > 65535)) {
    return InvalidArgument("backbone: keepalive_s must be 0 or 5..65535");
  }
  if (o.reconnect_min_ms < 1 || o.reconnect_max_ms < o.reconnect_min_ms) {
    return InvalidArgument("backbone: need 1 <= reconnect_min_ms <= reconnect_max_ms");
  }
  if (o.retry_min_ms < 1 || o.retry_max_ms < o.retry_min_ms) {
    return InvalidArgument("backbone: need 1 <= retry_min_ms <= retry_max_ms");
  }
  if (o.connect_timeout_ms < 1 || o.stop_timeout_ms < 0) {
    return InvalidArgument("backbone: connect_timeout_ms must be positive and stop_timeout_ms not negative");
  }
  if (o.return_to_primary_ms < 0 || o.primary_probe_interval_ms < 1) {
    return InvalidArgument("backbone: return_to_primary_ms must not be negative and primary_probe_interval_ms positive");
  }
  if (o.ack_timeout_ms < 0) return InvalidArgument("backbone: ack_timeout_ms must not be negative");
  return Status::Ok();
}

}  // namespace

std::string_view LinkStateName(LinkState state) {
  switch (state) {
    case LinkState::kDisconnected: return "disconnected";
    case LinkState::kConnecting: return "connecting";
    case LinkState::kConnected: return "connected";
    case LinkState::kStopping: return "stopping";
    case LinkState::kStopped: return "stopped";
  }
  return "unknown";
}

std::string MosquittoLibraryVersion() {
  if (!MosquittoLibraryInit().ok()) return "unknown";
  int major = 0, minor = 0, revision = 0;
  // Returns LIBMOSQUITTO_VERSION_NUMBER, not an error code.
  if (mosquitto_lib_version(&major, &minor, &revision) <= 0) return "unknown";
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(revision);
}

// One libmosquitto client per connection attempt. A fresh client per attempt
// means nothing of an ended session survives inside the library: libmosquitto
// would otherwise resend its own copies of unacknowledged messages after a
// reconnect, next to the ones the outbox hands out again.
//
// libmosquitto calls back from inside mosquitto_loop_read/write/misc and
// mosquitto_disconnect_v5. A client must not be destroyed from its own
// callback, and a library call made from one runs under the library's own
// locks, so callbacks only record what happened, talk to the outbox (which
// queues), and post the rest to the next loop turn.
class BackboneLink::Impl {
 public:
  Impl(EventLoop* loop, Outbox* outbox, BackboneOptions options);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void Start();
  void Stop(std::function<void()> done);
  void NotifyAppended();
  BackboneStats Stats() const;

 private:
  void NoteIfShort(const std::string& why);
  bool Flapping(int64_t now_ms) const;
  using TimerId = EventLoop::TimerId;
  // Work posted from other threads holds a weak reference to this; the link
  // is destroyed on the loop thread, so a posted task that finds it expired
  // knows the link is gone.
  struct AliveToken {};
  struct InflightEvent {
    int64_t sequence = 0;
    bool bulk = false;
    int64_t published_ns = 0;  // monotonic, when handed to the library
  };

  static void OnConnectCallback(mosquitto* m, void* self, int rc, int flags, const mosquitto_property* props);
  static void OnDisconnectCallback(mosquitto* m, void* self, int rc, const mosquitto_property* props);
  static void OnPublishCallback(mosquitto* m, void* self, int mid, int reason_code, const mosquitto_property* props);
  static void OnLogCallback(mosquitto* m, void* self, int level, const char* message);

  // Connection lifecycle.
  void Connect();
  void OnEndpointResolved(uint64_t attempt, Result<std::vector<SocketAddress>> addresses);
  // `connect_host` is what libmosquitto connects to: the endpoint's host or
  // an address it was found at.
  Status OpenClient(const EndpointConfig& endpoint, const std::string& connect_host);
  // A new client_ with every option set, not connecting yet.
  Status PrepareClient(const EndpointConfig& endpoint);
  static Status SetCredentials(mosquitto* m, const EndpointConfig& endpoint);
  void StartConnectCall();
  void OnConnectCallDone(uint64_t attempt, ConnectCall::Outcome outcome);
  Status ConfigureTls(mosquitto* m, const EndpointTlsConfig& tls);
  void OnConnected(int rc, const mosquitto_property* props);
  void OnDisconnected(int rc);
  void HandleConnectionEnd(uint64_t attempt, bool was_up, const std::string& why);
  void ConnectAttemptFailed(const Status& why);
  std::string LibraryErrors() const;
  void ScheduleReconnect();
  void EndSession();
  void ReleaseClient();

  // Return to the primary.
  void SchedulePrimaryProbe();
  void ProbePrimary();
  void OnPrimaryProbed(uint64_t attempt, const Status& result);
  void BeginReturnToPrimary();
  void CheckReturnProgress();
  void DisconnectForReturn();
  void CompleteReturn();
  void CancelPrimaryProbe();

  // Socket and timers.
  void OnSocketReady(uint32_t events);
  void OnMiscTimer();
  void SyncSocket();
  void UnregisterSocket();
  void CancelTimer(TimerId* id);
  void CancelAllTimers();

  // Delivery.
  void OnAppended();
  void ScheduleTurn();
  void Turn();
  void MaybeLease();
  void OnLeased(uint64_t attempt, size_t requested, Result<std::vector<LeasedEvent>> result);
  void Pump();
  void PumpRun();
  void DropReady();
  // The size of the PUBLISH packet sent; 0 if the event was not sent (dead-
  // lettered or handed back).
  uint64_t PublishEvent(const LeasedEvent& leased);
  void WaitForRateLimit(int64_t delay_ms);
  void OnPublished(int mid, int reason_code);
  void QueueAck(int64_t sequence);
  void FlushAcks();
  void HoldOrFlushAcks();
  void ResetLeases();
  void DeadLetter(int64_t sequence, std::string reason);
  void TransientFailure(int64_t sequence, const std::string& why);
  void OnNacked(uint64_t attempt, int64_t sequence, int64_t resume_ms, const Status& s);
  int64_t NextRetryDelayMs();
  void PauseForRetry(bool reset_leases);
  void MaybeRetry();
  void ClearInflight();
  void StartAckClockIfIdle();
  bool CheckAckProgress();

  // Presence and stopping.
  Status PublishState(const std::string& payload, int* mid);
  void NoteError(std::string what) {
    stats_.last_error = std::move(what);
    stats_.last_error_us = SystemClock().WallMicros();
  }
  // Whether the presence messages to the current endpoint carry the retain
  // flag: configured so, and the broker has not said it keeps none.
  bool RetainPresence() const {
    return options_.endpoints[endpoint_index_].retain && !broker_refuses_retain_[endpoint_index_];
  }
  void PublishOffline();
  std::string OnlinePayload() const;
  std::string OfflinePayload() const;
  void CheckStopProgress();
  void SendDisconnect();
  void FinishStop();

  template <typename Fn>
  void PostGuarded(Fn fn);
  int64_t RandomBetween(int64_t lo, int64_t hi);
  bool mqtt5() const { return options_.protocol == MqttProtocol::kMqtt5; }
  // An event holds its place in the window from PUBLISH until the store has
  // committed its ack: a crash can then repeat at most a window of events.
  size_t used_window() const { return inflight_.size() + control_mids_.size() + acks_unconfirmed_; }
  // Whether `n` more events may be published now: room in the window, in
  // the broker's Receive Maximum and in the publish limit.
  bool publish_room(size_t n) const {
    return used_window() + n <= window_ && inflight_.size() + control_mids_.size() + n <= receive_max_ &&
           inflight_.size() + n <= publish_limit_.limit();
  }
  // Leasing ahead of the window lets a PUBACK be followed by the next
  // PUBLISH in the same loop turn. The library walks its whole list of
  // unacknowledged messages on every publish and every PUBACK while its
  // send quota is above zero, so a small window refilled at once forwards
  // faster than a large one.
  size_t lease_budget() const { return std::max<size_t>(window_, options_.lease_ahead); }
  // What the link holds: the window's events plus those waiting in ready_.
  size_t leased_held() const { return used_window() + ready_count_; }
  bool on_primary() const { return endpoint_index_ == 0; }

  EventLoop* const loop_;
  Outbox* const outbox_;
  const BackboneOptions options_;
  const std::string state_topic_;
  std::shared_ptr<AliveToken> alive_ = std::make_shared<AliveToken>();
  std::mt19937_64 rng_;

  LinkState state_ = LinkState::kDisconnected;
  bool started_ = false;
  MosquittoClient client_;       // the current attempt's client; null between attempts
  uint64_t attempt_ = 0;         // connection attempts so far; late news of older ones is dropped
  bool attempt_ended_ = true;    // the current attempt's end was handled
  bool session_up_ = false;      // CONNACK success seen and the connection not lost since
  bool client_lost_ = false;     // libmosquitto reported the current client's connection gone
  // libmosquitto 2.0 closes its socket first and reports the disconnect
  // after, so the loop never watches the library's descriptor itself: it
  // watches a duplicate that only this link closes, always after RemoveFd.
  // The registration can then never outlive its descriptor or land on a
  // number another thread has just reused.
  UniqueFd watch_fd_;
  int watched_socket_ = -1;      // the library's descriptor that watch_fd_ duplicates
  uint32_t registered_events_ = 0;
  size_t endpoint_index_ = 0;
  // Per endpoint: which of its addresses the next plain-TCP attempt uses;
  // moves on after an attempt that failed, so that a name with several
  // addresses (a cluster behind one name) does not stay on a dead one.
  std::vector<size_t> address_turn_;
  // Per endpoint: the broker said it keeps no retained messages (a CONNECT
  // with a retained Will refused with 0x9A, or Retain Available 0 in the
  // CONNACK). Learnt again at every CONNACK.
  std::vector<bool> broker_refuses_retain_;
  bool retry_same_endpoint_now_ = false;  // the next reconnect: same endpoint, no delay
  std::string refusal_;  // this attempt's CONNACK refusal, described; empty if none
  int64_t previous_sleep_ms_ = 0;  // decorrelated jitter state; 0 after a successful connect
  int64_t sleep_before_session_ms_ = 0;  // previous_sleep_ms_ as it was before the current session's connect
  int64_t session_started_ms_ = 0;       // monotonic, at the current session's CONNACK
  std::array<int64_t, 3> short_sessions_ms_{};  // when the last three short sessions ended (0: none)
  // Error lines the library logged during the current connect attempt (TLS
  // endpoints only): OpenSSL's reason for a failed handshake lives there.
  std::vector<std::string> library_errors_;

  TimerId misc_timer_ = 0;
  TimerId reconnect_timer_ = 0;
  TimerId connect_timer_ = 0;
  TimerId retry_timer_ = 0;
  TimerId lease_retry_timer_ = 0;
  TimerId stop_timer_ = 0;
  TimerId probe_timer_ = 0;
  TimerId return_timer_ = 0;
  TimerId throttle_timer_ = 0;  // publishing waits for max_bytes_per_s
  TimerId ack_hold_timer_ = 0;  // flushes held acks (HoldOrFlushAcks)

  NameLookup lookup_;  // the endpoint's host name, before each connect
  ConnectCall connect_call_;  // libmosquitto's connect for TLS over a name, off the loop
  bool connect_call_waiting_ = false;  // this attempt waits for connect_call_ to finish an earlier one
  // Acknowledgement progress, for backbone.ack_timeout_s: PUBACKs seen,
  // the count at the last check, and when the count last moved (as of a
  // check) or the publish that ended an idle spell went out.
  uint64_t pubacks_ = 0;
  uint64_t pubacks_at_check_ = 0;
  int64_t ack_progress_ms_ = 0;

  TokenBucket publish_bucket_;  // max_bytes_per_s; unlimited at 0

  // Return to the primary (while on another endpoint).
  TcpProbe probe_;
  int64_t primary_reachable_since_ms_ = -1;  // monotonic; -1: the last probe failed or none yet
  bool returning_ = false;                   // draining this session to move to the primary

  // Delivery state of the current session.
  uint32_t window_ = 0;                          // our window: PUBLISH to the store's committed ack
  // The broker's Receive Maximum (at most the window): PUBLISHes, events'
  // and presence's, that may wait for their PUBACK at once. Acks waiting
  // for the store's commit do not count against it: the broker is done
  // with those.
  uint32_t receive_max_ = 0;
  // Of those, how many PUBLISHes of events may wait for their PUBACK at
  // once: follows the measured round trips (core/publish_limit.h).
  PublishLimit publish_limit_{1};
  uint32_t broker_max_packet_ = 0;               // 0: the broker gave none
  std::unordered_map<int, InflightEvent> inflight_;  // message id -> event
  size_t bulk_inflight_ = 0;                     // of those, bulk class
  // Leased, not yet published, per class: published highest class first as
  // the window frees up.
  std::array<std::deque<LeasedEvent>, kPriorityCount> ready_;
  // The event PublishEvent is sending, decoded from its record: one Event
  // reused for all, so its strings are allocated once, not per event.
  Event publishing_;
  size_t ready_count_ = 0;
  std::unordered_set<int> control_mids_;         // presence messages awaiting PUBACK
  bool lease_outstanding_ = false;               // at most one Lease at a time
  bool outbox_may_have_more_ = true;
  bool appended_during_lease_ = false;
  bool higher_may_be_waiting_ = true;            // something above bulk may be leasable
  bool leases_held_ = false;                     // leased since the last ResetLeases
  std::vector<int64_t> pending_acks_;
  size_t acks_unconfirmed_ = 0;                  // PUBACKed events whose ack the store has not yet committed
  bool turn_posted_ = false;
  bool retry_pending_ = false;                   // a transient failure: pause leasing for a backoff
  bool retry_due_ = false;
  bool retry_reset_ = false;                     // ... then start again from the oldest undelivered event
  uint32_t retry_attempt_ = 0;
  int64_t retry_resume_ms_ = 0;                  // steady clock: when the current pause ends
  size_t nacks_outstanding_ = 0;
  // Steady clock (ms): nacked events may come due until then. Not the wall
  // clock, which may be set meanwhile (the outbox moves its retry times).
  int64_t nack_poll_until_ms_ = 0;

  std::vector<std::function<void()>> stop_done_;
  int offline_mid_ = -1;
  bool offline_published_ = false;               // this session already said "offline"
  bool offline_acked_ = false;
  bool disconnect_sent_ = false;

  BackboneStats stats_;
};

BackboneLink::Impl::Impl(EventLoop* loop, Outbox* outbox, BackboneOptions options)
    : loop_(loop),
      outbox_(outbox),
      options_(std::move(options)),
      state_topic_(options_.topic_prefix + "/state"),
      // Jitter only has to differ between gateways, not be unpredictable.
      rng_(static_cast<uint64_t>(SystemClock().MonotonicNanos()) ^
           (static_cast<uint64_t>(SystemClock().WallMicros()) << 7) ^ (static_cast<uint64_t>(getpid()) << 40)),
      lookup_(loop),
      connect_call_(loop),
      // One second's worth of burst: a drain after an outage starts at the
      // cap, not above it for long.
      publish_bucket_(options_.clock != nullptr ? *options_.clock : SystemClock(),
                      static_cast<double>(options_.max_bytes_per_s), 0),
      probe_(loop) {
  stats_.endpoint = EndpointLabel(options_.endpoints.front());
  address_turn_.assign(options_.endpoints.size(), 0);
  broker_refuses_retain_.assign(options_.endpoints.size(), false);
}

BackboneLink::Impl::~Impl() {
  alive_.reset();
  probe_.Cancel();
  CancelAllTimers();
  UnregisterSocket();
  client_.reset();
  // PUBACKs already received still count; everything else in flight goes
  // back to the outbox for whoever drains it next.
  FlushAcks();
  if (leases_held_) outbox_->ResetLeases();
}

template <typename Fn>
void BackboneLink::Impl::PostGuarded(Fn fn) {
  std::weak_ptr<AliveToken> alive = alive_;
  loop_->Post([alive, fn = std::move(fn)]() mutable {
    if (alive.lock()) fn();
  });
}

int64_t BackboneLink::Impl::RandomBetween(int64_t lo, int64_t hi) {
  if (hi <= lo) return lo;
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
}

// ---------------------------------------------------------------------------
// Public operations

void BackboneLink::Impl::Start() {
  if (started_ || state_ != LinkState::kDisconnected) {
    WS_LOG_WARN(kLog, "Start after Start or Stop; ignored");
    return;
  }
  started_ = true;
  for (const EndpointConfig& ep : options_.endpoints) {
    if (ep.password_file.empty()) continue;
    if (!ep.tls.enabled) {
      WS_LOG_WARN(kLog, "the password goes to this endpoint unencrypted: it has no tls", {{"endpoint", EndpointLabel(ep)}});
    }
    struct stat st {};
    if (stat(ep.password_file.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
      WS_LOG_WARN(kLog, "the password file can be read by other users (chmod 600 it)",
                  {{"endpoint", EndpointLabel(ep)}, {"path", ep.password_file}});
    }
  }
  if (options_.max_bytes_per_s > 0) {
    WS_LOG_INFO(kLog, "event publishes capped", {{"max_bytes_per_s", std::to_string(options_.max_bytes_per_s)}});
  }
  misc_timer_ = loop_->AddTimer(kMiscIntervalMs, [this] { OnMiscTimer(); });
  Connect();
}

void BackboneLink::Impl::Stop(std::function<void()> done) {
  if (state_ == LinkState::kStopped) {
    if (done) loop_->Post(std::move(done));
    return;
  }
  stop_done_.push_back(std::move(done));
  if (state_ == LinkState::kStopping) return;
  state_ = LinkState::kStopping;
  // A return to the primary under way is overtaken: its drain (offline
  // state, in-flight acks, DISCONNECT) is what Stop does too.
  returning_ = false;
  CancelTimer(&return_timer_);
  CancelPrimaryProbe();
  CancelTimer(&reconnect_timer_);
  CancelTimer(&retry_timer_);
  CancelTimer(&lease_retry_timer_);
  retry_pending_ = false;
  if (!session_up_) {
    // Not connected: there is no one to tell. Finish on the next turn so
    // `done` never runs inside Stop.
    PostGuarded([this] { FinishStop(); });
    return;
  }
  if (disconnect_sent_) {
    // The return to the primary already sent DISCONNECT: wait for its end.
    stop_timer_ = loop_->AddTimer(kDisconnectGraceMs, [this] {
      stop_timer_ = 0;
      FinishStop();
    });
    return;
  }
  PublishOffline();
  SyncSocket();
  stop_timer_ = loop_->AddTimer(options_.stop_timeout_ms, [this] {
    stop_timer_ = 0;
    if (!inflight_.empty() || !offline_acked_) {
      WS_LOG_WARN(kLog, "stopping before every PUBACK arrived; unacknowledged events are sent again next time",
                  {{"inflight", std::to_string(inflight_.size())}});
    }
    SendDisconnect();
  });
  ScheduleTurn();
}

void BackboneLink::Impl::NotifyAppended() {
  // Any thread. Reading alive_ is safe while the link exists (the caller's
  // promise); only the destructor changes it.
  std::weak_ptr<AliveToken> alive = alive_;
  loop_->Post([alive, this] {
    if (alive.lock()) OnAppended();
  });
}

void BackboneLink::Impl::NoteIfShort(const std::string& why) {
  const int64_t now = SystemClock().MonotonicMillis();
  if (now - session_started_ms_ >= kStableSessionMs) return;
  ++stats_.short_sessions;
  short_sessions_ms_ = {short_sessions_ms_[1], short_sessions_ms_[2], now};
  // The next reconnect waits as if this session had never come up.
  previous_sleep_ms_ = sleep_before_session_ms_;
  if (Flapping(now)) {
    WS_LOG_ERROR(kLog,
                 "sessions keep ending within a minute of connecting: does another node use this client id "
                 "(give each its own node.id or backbone.client_id), or does the broker drop this client?",
                 {{"client_id", options_.client_id}, {"endpoint", stats_.endpoint},
                  {"short_sessions", std::to_string(stats_.short_sessions)}, {"reason", why}});
  }
}

bool BackboneLink::Impl::Flapping(int64_t now_ms) const {
  return short_sessions_ms_[0] != 0 && now_ms - short_sessions_ms_[0] <= kFlappingWindowMs;
}

BackboneStats BackboneLink::Impl::Stats() const {
  BackboneStats s = stats_;
  s.session_flapping = Flapping(SystemClock().MonotonicMillis());
  s.state = state_;
  s.endpoint_index = static_cast<uint32_t>(endpoint_index_);
  s.inflight = static_cast<uint32_t>(inflight_.size());
  s.window = window_;
  s.publish_limit = session_up_ ? publish_limit_.limit() : 0;
  s.shortest_round_trip_us = session_up_ ? publish_limit_.shortest_round_trip_us() : 0;
  s.broker_max_packet = broker_max_packet_;
  return s;
}

// ---------------------------------------------------------------------------
// Connection lifecycle

void BackboneLink::Impl::Connect() {
  reconnect_timer_ = 0;
  if (state_ == LinkState::kStopping || state_ == LinkState::kStopped) return;
  ReleaseClient();
  ++attempt_;
  attempt_ended_ = false;
  session_up_ = false;
  client_lost_ = false;
  returning_ = false;
  offline_published_ = false;
  offline_acked_ = false;
  offline_mid_ = -1;
  disconnect_sent_ = false;
  library_errors_.clear();
  refusal_.clear();
  const EndpointConfig& ep = options_.endpoints[endpoint_index_];
  stats_.endpoint = EndpointLabel(ep);
  state_ = LinkState::kConnecting;
  WS_LOG_DEBUG(kLog, "connecting",
               {{"endpoint", stats_.endpoint},
                {"host", ep.host},
                {"port", std::to_string(ep.port)},
                {"tls", ep.tls.enabled ? "yes" : "no"}});
  // The timeout covers the name lookup and the connect together.
  const uint64_t attempt = attempt_;
  connect_timer_ = loop_->AddTimer(options_.connect_timeout_ms, [this, attempt] {
    connect_timer_ = 0;
    if (attempt != attempt_ || attempt_ended_ || session_up_) return;
    const std::string limit = std::to_string(options_.connect_timeout_ms) + " ms";
    ConnectAttemptFailed(Status(StatusCode::kDeadlineExceeded,
                                client_ ? "no CONNACK within " + limit
                                        : "the name lookup of " + options_.endpoints[endpoint_index_].host +
                                              " took longer than " + limit));
  });
  // libmosquitto would look the name up itself, with a getaddrinfo that
  // blocks the loop (and the local API with it) for as long as the DNS
  // server takes: seconds at a time while the network is down.
  lookup_.Start(ep.host, ep.port, [this, attempt](Result<std::vector<SocketAddress>> addresses) {
    OnEndpointResolved(attempt, std::move(addresses));
  });
}

void BackboneLink::Impl::OnEndpointResolved(uint64_t attempt, Result<std::vector<SocketAddress>> addresses) {
  if (attempt != attempt_ || attempt_ended_ || state_ != LinkState::kConnecting) return;
  if (!addresses.ok()) {
    ConnectAttemptFailed(addresses.status());
    return;
  }
  const EndpointConfig& ep = options_.endpoints[endpoint_index_];
  if (ep.tls.enabled && !ParseAddressLiteral(ep.host, ep.port).has_value()) {
    // Over TLS libmosquitto sends the name (SNI) and checks the certificate
    // against it, so it gets the name and looks it up again inside its
    // connect call (and its asynchronous connect tries only the first
    // address). That call runs off the loop (ConnectCall); one still running
    // for an earlier attempt is waited for.
    if (connect_call_.Busy()) {
      connect_call_waiting_ = true;
      return;
    }
    StartConnectCall();
    return;
  }
  // Plain TCP (or an IP literal) gets one address, the next one after each
  // failed attempt.
  const size_t turn = address_turn_[endpoint_index_] % addresses->size();
  const std::string connect_host = ep.tls.enabled ? ep.host : NumericHost((*addresses)[turn]);
  Status s = OpenClient(ep, connect_host);
  if (!s.ok()) {
    ConnectAttemptFailed(s);
    return;
  }
  SyncSocket();  // may find the socket unusable and end the attempt
}

void BackboneLink::Impl::StartConnectCall() {
  connect_call_waiting_ = false;
  const EndpointConfig& ep = options_.endpoints[endpoint_index_];
  Status s = PrepareClient(ep);
  if (!s.ok()) {
    ConnectAttemptFailed(s);
    return;
  }
  const uint64_t attempt = attempt_;
  connect_call_.Start(std::move(client_), ep.host, ep.port, static_cast<int>(options_.keepalive_s),
                      [this, attempt](ConnectCall::Outcome outcome) {
                        OnConnectCallDone(attempt, std::move(outcome));
                      });
}

// The loop thread, with the client back from ConnectCall's thread.
void BackboneLink::Impl::OnConnectCallDone(uint64_t attempt, ConnectCall::Outcome outcome) {
  if (attempt == attempt_ && !attempt_ended_ && state_ == LinkState::kConnecting && !client_) {
    client_ = std::move(outcome.client);
    mosquitto_user_data_set(client_.get(), this);
    mosquitto_log_callback_set(client_.get(), &Impl::OnLogCallback);
    for (std::string& line : outcome.library_errors) {
      if (library_errors_.size() < kMaxLibraryErrors) library_errors_.push_back(std::move(line));
    }
    const EndpointConfig& ep = options_.endpoints[endpoint_index_];
    Status s = MosquittoStatus(outcome.rc, "connect to " + ep.host + ":" + std::to_string(ep.port));
    if (!s.ok()) {
      ConnectAttemptFailed(s);
    } else {
      SyncSocket();  // may find the socket unusable and end the attempt
    }
  }
  // A client whose attempt has ended meanwhile is destroyed with `outcome`.
  if (connect_call_waiting_ && !attempt_ended_ && state_ == LinkState::kConnecting && !client_) StartConnectCall();
}

Status BackboneLink::Impl::OpenClient(const EndpointConfig& endpoint, const std::string& connect_host) {
  WS_TRY(PrepareClient(endpoint));
  int rc = mosquitto_connect_bind_async(client_.get(), connect_host.c_str(), endpoint.port,
                                        static_cast<int>(options_.keepalive_s), nullptr);
  std::string where = endpoint.host + ":" + std::to_string(endpoint.port);
  if (connect_host != endpoint.host) where += " (" + connect_host + ")";
  return MosquittoStatus(rc, "connect to " + where);
}

Status BackboneLink::Impl::PrepareClient(const EndpointConfig& endpoint) {
  WS_TRY(MosquittoLibraryInit());
  // Clean start, and (MQTT 5) no Session Expiry Interval, i.e. 0: the broker
  // keeps nothing of ours between connections. The outbox is the single
  // source of truth for what is undelivered; after a reconnect the link
  // leases again from the oldest unacknowledged event, and the in-flight
  // window bounds the duplicates that can cause. A broker-side session would
  // be a second, volatile copy of the same state.
  errno = 0;
  mosquitto* raw = mosquitto_new(options_.client_id.c_str(), /*clean_session=*/true, this);
  if (raw == nullptr) return ErrnoStatus(errno != 0 ? errno : ENOMEM, "mosquitto_new");
  client_.reset(raw);
  mosquitto* m = client_.get();
  const int window = static_cast<int>(std::min(options_.inflight_window, kMaxWindow));
  WS_TRY(MosquittoStatus(
      mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, mqtt5() ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311),
      "set the MQTT protocol version"));
  // libmosquitto keeps its own in-flight quota; with the same bound as ours
  // it never queues a message of ours behind its back.
  WS_TRY(MosquittoStatus(mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, window), "set the send maximum"));
  if (mqtt5()) {
    WS_TRY(MosquittoStatus(mosquitto_int_option(m, MOSQ_OPT_RECEIVE_MAXIMUM, window), "set the receive maximum"));
  }
  WS_TRY(MosquittoStatus(mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1), "set TCP_NODELAY"));
  WS_TRY(SetCredentials(m, endpoint));
  mosquitto_connect_v5_callback_set(m, &Impl::OnConnectCallback);
  mosquitto_disconnect_v5_callback_set(m, &Impl::OnDisconnectCallback);
  mosquitto_publish_v5_callback_set(m, &Impl::OnPublishCallback);
  if (endpoint.tls.enabled) {
    // Only TLS endpoints: the library formats every log line it emits once a
    // callback is set, and only the TLS reasons are worth that.
    mosquitto_log_callback_set(m, &Impl::OnLogCallback);
    WS_TRY(ConfigureTls(m, endpoint.tls));
  }

  const std::string will = OfflinePayload();
  PropertyList will_properties;
  if (mqtt5()) WS_TRY(will_properties.AddString(MQTT_PROP_CONTENT_TYPE, "application/json"));
  int rc = mosquitto_will_set_v5(m, state_topic_.c_str(), static_cast<int>(will.size()), will.data(), kQos1,
                                 RetainPresence(), mqtt5() ? will_properties.get() : nullptr);
  WS_TRY(MosquittoStatus(rc, "set the Last Will"));
  // On success the library owns the list.
  if (mqtt5()) will_properties.Release();
  return Status::Ok();
}

// Read at every connect: a rotated password applies from the next one. The
// password is wiped from our memory once libmosquitto holds its copy.
Status BackboneLink::Impl::SetCredentials(mosquitto* m, const EndpointConfig& endpoint) {
  if (endpoint.username.empty()) return Status::Ok();
  if (endpoint.password_file.empty()) {
    return MosquittoStatus(mosquitto_username_pw_set(m, endpoint.username.c_str(), nullptr), "set the user name");
  }
  Result<std::string> read = ReadRegularFile(endpoint.password_file, kMaxMqttString + 2);
  if (!read.ok()) return Status(read.status().code(), "password_file: " + read.status().message());
  std::string password = std::move(read).value();
  if (!password.empty() && password.back() == '\n') password.pop_back();
  if (!password.empty() && password.back() == '\r') password.pop_back();
  Status s;
  if (password.size() > kMaxMqttString) {
    s = InvalidArgument("password_file: " + endpoint.password_file + " holds more than 65535 bytes");
  } else {
    s = MosquittoStatus(mosquitto_username_pw_set(m, endpoint.username.c_str(), password.c_str()),
                        "set the user name and password");
  }
  explicit_bzero(password.data(), password.size());
  return s;
}

namespace {

// A passphrase-protected key fails to load instead of OpenSSL asking for the
// passphrase on a terminal, which would block the loop.
int NoPassphrase(char* buf, int size, int, void*) {
  if (size > 0) buf[0] = '\0';
  return 0;
}

}  // namespace

Status BackboneLink::Impl::ConfigureTls(mosquitto* m, const EndpointTlsConfig& tls) {
  const char* cert = tls.cert_file.empty() ? nullptr : tls.cert_file.c_str();
  const char* key = tls.key_file.empty() ? nullptr : tls.key_file.c_str();
  // mosquitto_tls_set opens each file once to check it; INVAL then means
  // one of them cannot be read (the contents are loaded at connect).
  const char* file_error = "TLS: ca_file, cert_file or key_file cannot be read";
  if (!tls.ca_file.empty()) {
    WS_TRY(MosquittoStatus(mosquitto_tls_set(m, tls.ca_file.c_str(), nullptr, cert, key, &NoPassphrase), file_error));
  } else {
    WS_TRY(MosquittoStatus(mosquitto_int_option(m, MOSQ_OPT_TLS_USE_OS_CERTS, 1), "TLS: use the system's CAs"));
    if (cert != nullptr) {
      WS_TRY(MosquittoStatus(mosquitto_tls_set(m, nullptr, kSystemCaDir, cert, key, &NoPassphrase), file_error));
    }
  }
  // Always verify the broker's chain; TLS 1.2 or newer (the library's default
  // for a null version).
  WS_TRY(MosquittoStatus(mosquitto_tls_opts_set(m, kVerifyPeer, nullptr, nullptr), "TLS: set the verify mode"));
  WS_TRY(MosquittoStatus(mosquitto_tls_insecure_set(m, !tls.verify_hostname), "TLS: set host name verification"));
  if (!tls.alpn.empty()) {
    WS_TRY(MosquittoStatus(mosquitto_string_option(m, MOSQ_OPT_TLS_ALPN, tls.alpn.c_str()), "TLS: set ALPN"));
  }
  return Status::Ok();
}

void BackboneLink::Impl::OnConnectCallback(mosquitto*, void* self, int rc, int, const mosquitto_property* props) {
  static_cast<Impl*>(self)->OnConnected(rc, props);
}

void BackboneLink::Impl::OnDisconnectCallback(mosquitto*, void* self, int rc, const mosquitto_property*) {
  static_cast<Impl*>(self)->OnDisconnected(rc);
}

void BackboneLink::Impl::OnPublishCallback(mosquitto*, void* self, int mid, int reason_code,
                                           const mosquitto_property*) {
  static_cast<Impl*>(self)->OnPublished(mid, reason_code);
}

void BackboneLink::Impl::OnLogCallback(mosquitto*, void* self, int level, const char* message) {
  if ((level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) == 0 || message == nullptr) return;
  // The library's own lines ("OpenSSL Error[0]: ...certificate verify
  // failed", "Unable to load client key file ...") name files and reasons,
  // never file contents.
  Impl* impl = static_cast<Impl*>(self);
  if (impl->library_errors_.size() < kMaxLibraryErrors) impl->library_errors_.emplace_back(message);
  WS_LOG_DEBUG(kLog, "libmosquitto", {{"message", message}});
}

std::string BackboneLink::Impl::LibraryErrors() const {
  std::string out;
  for (const std::string& line : library_errors_) {
    if (!out.empty()) out += "; ";
    out += line;
  }
  return out;
}

void BackboneLink::Impl::OnConnected(int rc, const mosquitto_property* props) {
  if (rc != 0) {
    // libmosquitto closes the connection and reports it through on_disconnect.
    std::string why = mqtt5() ? DescribeReasonCode(rc) : std::string(mosquitto_connack_string(rc));
    WS_LOG_WARN(kLog, "broker refused the connection", {{"endpoint", stats_.endpoint}, {"reason", why}});
    refusal_ = "the broker refused the connection: " + why;
    if (mqtt5() && rc == MQTT_RC_RETAIN_NOT_SUPPORTED && RetainPresence()) {
      // Our retained Will was the reason: connect again at once, without it.
      broker_refuses_retain_[endpoint_index_] = true;
      retry_same_endpoint_now_ = true;
      WS_LOG_WARN(kLog, "the broker keeps no retained messages; presence goes unretained on this endpoint",
                  {{"endpoint", stats_.endpoint}});
    }
    return;
  }
  CancelTimer(&connect_timer_);
  session_up_ = true;
  if (state_ == LinkState::kConnecting) state_ = LinkState::kConnected;
  ++stats_.connects;
  sleep_before_session_ms_ = previous_sleep_ms_;
  previous_sleep_ms_ = 0;
  session_started_ms_ = SystemClock().MonotonicMillis();
  window_ = std::min(options_.inflight_window, kMaxWindow);
  receive_max_ = window_;
  broker_max_packet_ = 0;
  if (props != nullptr) {
    uint16_t receive_maximum = 0;
    if (mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &receive_maximum, false) != nullptr &&
        receive_maximum > 0) {
      receive_max_ = std::min<uint32_t>(window_, receive_maximum);
    }
    uint32_t max_packet = 0;
    if (mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &max_packet, false) != nullptr) {
      broker_max_packet_ = max_packet;
    }
  }
  publish_limit_.Reset(receive_max_);
  // Absent means available. A broker that takes retained messages again is
  // sent a retained Will from the next connect on.
  uint8_t retain_available = 1;
  if (props == nullptr ||
      mosquitto_property_read_byte(props, MQTT_PROP_RETAIN_AVAILABLE, &retain_available, false) == nullptr) {
    retain_available = 1;
  }
  broker_refuses_retain_[endpoint_index_] = retain_available == 0;
  const EndpointConfig& ep = options_.endpoints[endpoint_index_];
  WS_LOG_INFO(kLog, "connected",
              {{"endpoint", stats_.endpoint},
               {"primary", on_primary() ? "yes" : "no"},
               {"tls", ep.tls.enabled ? (ep.tls.cert_file.empty() ? "tls" : "mtls") : "no"},
               {"protocol", mqtt5() ? "mqtt5" : "mqtt311"},
               {"window", std::to_string(window_)},
               {"broker_receive_maximum", std::to_string(receive_max_)},
               {"broker_max_packet", std::to_string(broker_max_packet_)},
               {"retained_presence", RetainPresence() ? "yes" : "no"}});
  library_errors_.clear();
  if (state_ == LinkState::kStopping) return;
  // Library calls stay out of library callbacks (they run with the
  // library's locks held): the birth message and the first lease follow on
  // the next turn, birth first.
  const uint64_t attempt = attempt_;
  PostGuarded([this, attempt] {
    if (attempt != attempt_ || !session_up_ || state_ != LinkState::kConnected) return;
    // The handshake is done: stop paying for the library's log lines.
    mosquitto_log_callback_set(client_.get(), nullptr);
    int mid = -1;
    Status s = PublishState(OnlinePayload(), &mid);
    if (s.ok()) {
      StartAckClockIfIdle();
      control_mids_.insert(mid);
    } else {
      WS_LOG_WARN(kLog, "could not publish the online state", {{"error", s.ToString()}});
    }
    SyncSocket();
    outbox_may_have_more_ = true;
    higher_may_be_waiting_ = true;
    MaybeLease();
    SchedulePrimaryProbe();
  });
}

void BackboneLink::Impl::OnDisconnected(int rc) {
  // libmosquitto has closed its socket (or closes it right after this
  // callback): stop watching it.
  UnregisterSocket();
  bool was_up = session_up_;
  session_up_ = false;
  client_lost_ = true;
  if (state_ == LinkState::kConnected || state_ == LinkState::kConnecting) state_ = LinkState::kDisconnected;
  // `rc` is a MOSQ_ERR_* code, or the reason code of a DISCONNECT the broker
  // sent. Described here: MOSQ_ERR_ERRNO needs errno as the library left it.
  std::string why;
  if (rc == MOSQ_ERR_SUCCESS) {
    why = "closed on request";
  } else if (rc >= 0x80 && rc <= 0xff) {
    why = "the broker sent DISCONNECT " + DescribeReasonCode(rc);
  } else {
    why = MosquittoStatus(rc, "connection").message();
  }
  uint64_t attempt = attempt_;
  PostGuarded([this, attempt, was_up, why = std::move(why)] { HandleConnectionEnd(attempt, was_up, why); });
}

void BackboneLink::Impl::HandleConnectionEnd(uint64_t attempt, bool was_up, const std::string& why) {
  if (attempt != attempt_ || attempt_ended_) return;
  if (!was_up) {
    ConnectAttemptFailed(Unavailable(why));
    return;
  }
  attempt_ended_ = true;
  ReleaseClient();
  EndSession();
  ++stats_.disconnects;
  if (state_ == LinkState::kStopping) {
    FinishStop();
    return;
  }
  if (returning_) {
    // The planned end of the session on the secondary (or an earlier loss
    // while draining it): the primary answered its probes, go there now.
    CompleteReturn();
    return;
  }
  WS_LOG_WARN(kLog, "connection lost", {{"endpoint", stats_.endpoint}, {"reason", why}});
  NoteError("connection lost: " + why);
  NoteIfShort(why);
  ScheduleReconnect();
}

void BackboneLink::Impl::ConnectAttemptFailed(const Status& why) {
  attempt_ended_ = true;
  ++address_turn_[endpoint_index_];
  session_up_ = false;
  ReleaseClient();
  ++stats_.connect_failures;
  if (state_ == LinkState::kStopping) {
    FinishStop();
    return;
  }
  // A TLS failure shows only as a closed connection or MOSQ_ERR_TLS; the
  // reason (unknown CA, name mismatch, unreadable key, alert from the
  // broker) is in what the library logged meanwhile (TLS endpoints only).
  const std::string tls_error = LibraryErrors();
  library_errors_.clear();
  if (!refusal_.empty()) {
    NoteError(refusal_);
  } else if (!tls_error.empty()) {
    NoteError("connect failed: " + why.ToString() + " (TLS: " + tls_error + ")");
  } else {
    NoteError("connect failed: " + why.ToString());
  }
  if (!tls_error.empty()) {
    WS_LOG_ERROR(kLog, "connect failed: TLS",
                 {{"endpoint", stats_.endpoint}, {"error", why.ToString()}, {"tls_error", tls_error}});
  } else {
    WS_LOG_WARN(kLog, "connect failed",
                {{"endpoint", stats_.endpoint},
                 {"tls", options_.endpoints[endpoint_index_].tls.enabled ? "yes" : "no"},
                 {"error", why.ToString()}});
  }
  ScheduleReconnect();
}

void BackboneLink::Impl::ScheduleReconnect() {
  state_ = LinkState::kDisconnected;
  if (retry_same_endpoint_now_) {
    // Not the broker's failure: what it refused has been left out.
    retry_same_endpoint_now_ = false;
    reconnect_timer_ = loop_->AddTimer(0, [this] { Connect(); });
    return;
  }
  const size_t n = options_.endpoints.size();
  if (n > 1) {
    endpoint_index_ = (endpoint_index_ + 1) % n;
    ++stats_.failovers;
    WS_LOG_INFO(kLog, "failing over", {{"next_endpoint", EndpointLabel(options_.endpoints[endpoint_index_])}});
  }
  // Decorrelated jitter: sleep = min(cap, random_between(base, previous * 3)).
  const int64_t base = options_.reconnect_min_ms;
  const int64_t cap = options_.reconnect_max_ms;
  const int64_t previous = std::max(previous_sleep_ms_, base);
  const int64_t upper = previous > cap / 3 ? cap : previous * 3;
  const int64_t sleep_ms = std::min(cap, RandomBetween(base, upper));
  previous_sleep_ms_ = sleep_ms;
  WS_LOG_DEBUG(kLog, "reconnecting later", {{"delay_ms", std::to_string(sleep_ms)}});
  reconnect_timer_ = loop_->AddTimer(sleep_ms, [this] { Connect(); });
}

void BackboneLink::Impl::EndSession() {
  session_up_ = false;
  CancelTimer(&retry_timer_);
  CancelTimer(&lease_retry_timer_);
  CancelPrimaryProbe();
  retry_pending_ = false;
  retry_due_ = false;
  retry_reset_ = false;
  nacks_outstanding_ = 0;
  // Acks first: the store runs calls in order, so what was acknowledged is
  // gone before the leases are reset and the next lease starts at the oldest.
  FlushAcks();
  ClearInflight();
  control_mids_.clear();
  ResetLeases();
}

void BackboneLink::Impl::ClearInflight() {
  inflight_.clear();
  bulk_inflight_ = 0;
  DropReady();
}

// ---------------------------------------------------------------------------
// Return to the primary

void BackboneLink::Impl::SchedulePrimaryProbe() {
  if (options_.return_to_primary_ms <= 0 || on_primary() || probe_timer_ != 0 || probe_.running()) return;
  if (!session_up_ || state_ != LinkState::kConnected || returning_) return;
  // Probing more often than the required stable time adds nothing.
  const int64_t interval =
      std::max(kMinProbeIntervalMs, std::min(options_.primary_probe_interval_ms, options_.return_to_primary_ms));
  probe_timer_ = loop_->AddTimer(interval, [this] {
    probe_timer_ = 0;
    ProbePrimary();
  });
}

void BackboneLink::Impl::ProbePrimary() {
  if (!session_up_ || state_ != LinkState::kConnected || returning_ || on_primary()) return;
  const EndpointConfig& primary = options_.endpoints.front();
  const int64_t timeout =
      std::max(kMinProbeIntervalMs, std::min(options_.connect_timeout_ms, options_.primary_probe_interval_ms));
  const uint64_t attempt = attempt_;
  probe_.Start(primary.host, primary.port, timeout, [this, attempt](Status result) { OnPrimaryProbed(attempt, result); });
}

void BackboneLink::Impl::OnPrimaryProbed(uint64_t attempt, const Status& result) {
  if (attempt != attempt_ || !session_up_ || state_ != LinkState::kConnected || returning_) return;
  const int64_t now = SystemClock().MonotonicMillis();
  if (result.ok()) {
    if (primary_reachable_since_ms_ < 0) {
      primary_reachable_since_ms_ = now;
      WS_LOG_INFO(kLog, "primary endpoint reachable again; returning once it stays so",
                  {{"primary", EndpointLabel(options_.endpoints.front())},
                   {"after_ms", std::to_string(options_.return_to_primary_ms)}});
    }
    if (now - primary_reachable_since_ms_ >= options_.return_to_primary_ms) {
      BeginReturnToPrimary();
      return;
    }
  } else {
    if (primary_reachable_since_ms_ >= 0) {
      WS_LOG_INFO(kLog, "primary endpoint unreachable again", {{"error", result.ToString()}});
    } else {
      WS_LOG_DEBUG(kLog, "primary endpoint still unreachable", {{"error", result.ToString()}});
    }
    primary_reachable_since_ms_ = -1;
  }
  SchedulePrimaryProbe();
}

// Leaves the secondary the way Stop leaves a broker: no new leases, the
// retained "offline" state (this broker's view of the node would otherwise
// stay "online"), the in-flight PUBACKs awaited for at most stop_timeout_ms,
// then DISCONNECT. Only after the session has ended does Connect open the
// primary, so nothing is ever published to both.
void BackboneLink::Impl::BeginReturnToPrimary() {
  WS_LOG_INFO(kLog, "returning to the primary endpoint",
              {{"from", stats_.endpoint},
               {"to", EndpointLabel(options_.endpoints.front())},
               {"inflight", std::to_string(inflight_.size())}});
  returning_ = true;
  DropReady();  // the session's end resets the leases
  CancelPrimaryProbe();
  PublishOffline();
  SyncSocket();
  return_timer_ = loop_->AddTimer(options_.stop_timeout_ms, [this] {
    return_timer_ = 0;
    if (!inflight_.empty()) {
      WS_LOG_WARN(kLog, "leaving the secondary before every PUBACK arrived; those events are sent again",
                  {{"inflight", std::to_string(inflight_.size())}});
    }
    DisconnectForReturn();
  });
  ScheduleTurn();
}

void BackboneLink::Impl::CheckReturnProgress() {
  if (!returning_ || disconnect_sent_) return;
  if (offline_acked_ && inflight_.empty()) DisconnectForReturn();
}

void BackboneLink::Impl::DisconnectForReturn() {
  if (!returning_ || disconnect_sent_) return;
  disconnect_sent_ = true;
  CancelTimer(&return_timer_);
  FlushAcks();
  if (!session_up_ || !client_) {
    CompleteReturn();
    return;
  }
  int rc = mosquitto_disconnect_v5(client_.get(), MQTT_RC_NORMAL_DISCONNECTION, nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    WS_LOG_WARN(kLog, "disconnect", {{"status", MosquittoStatus(rc, "mosquitto_disconnect_v5").ToString()}});
  }
  SyncSocket();
  // on_disconnect normally ends the session first (HandleConnectionEnd).
  return_timer_ = loop_->AddTimer(kDisconnectGraceMs, [this] {
    return_timer_ = 0;
    CompleteReturn();
  });
}

void BackboneLink::Impl::CompleteReturn() {
  if (!returning_) return;
  returning_ = false;
  CancelTimer(&return_timer_);
  if (!attempt_ended_) {
    attempt_ended_ = true;
    ReleaseClient();
    EndSession();
    ++stats_.disconnects;
  }
  endpoint_index_ = 0;
  ++stats_.failovers;
  ++stats_.returns_to_primary;
  previous_sleep_ms_ = 0;
  state_ = LinkState::kDisconnected;
  // The primary has just answered every probe: no backoff.
  Connect();
}

void BackboneLink::Impl::CancelPrimaryProbe() {
  CancelTimer(&probe_timer_);
  probe_.Cancel();
  primary_reachable_since_ms_ = -1;
}

void BackboneLink::Impl::ReleaseClient() {
  CancelTimer(&connect_timer_);
  lookup_.Cancel();
  connect_call_waiting_ = false;
  UnregisterSocket();
  client_.reset();
}

// ---------------------------------------------------------------------------
// Socket and timers

void BackboneLink::Impl::OnSocketReady(uint32_t events) {
  if (!client_ || client_lost_) return;
  Status failure;
  if ((events & (EventLoop::kReadable | EventLoop::kError | EventLoop::kHangup)) != 0) {
    int rc = mosquitto_loop_read(client_.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      // A failed read has normally been reported through on_disconnect.
      failure = MosquittoStatus(rc, "mosquitto_loop_read");
      WS_LOG_DEBUG(kLog, "read ended", {{"status", failure.ToString()}});
    }
  }
  if ((events & EventLoop::kWritable) != 0 && client_ && !client_lost_) {
    int rc = mosquitto_loop_write(client_.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      if (failure.ok()) failure = MosquittoStatus(rc, "mosquitto_loop_write");
      WS_LOG_DEBUG(kLog, "write ended", {{"status", MosquittoStatus(rc, "mosquitto_loop_write").ToString()}});
    }
  }
  // libmosquitto 2.0 closes the socket of a failed TLS handshake without
  // calling on_disconnect: without this the attempt would hang until the
  // connect timeout.
  if (client_ && !client_lost_ && mosquitto_socket(client_.get()) < 0) {
    UnregisterSocket();
    const bool was_up = session_up_;
    session_up_ = false;
    client_lost_ = true;
    if (state_ == LinkState::kConnected || state_ == LinkState::kConnecting) state_ = LinkState::kDisconnected;
    const uint64_t attempt = attempt_;
    std::string why = failure.ok() ? std::string("the client library closed the connection") : failure.message();
    PostGuarded([this, attempt, was_up, why = std::move(why)] { HandleConnectionEnd(attempt, was_up, why); });
    return;
  }
  Pump();
  SyncSocket();
}

void BackboneLink::Impl::StartAckClockIfIdle() {
  if (inflight_.empty() && control_mids_.empty()) ack_progress_ms_ = SystemClock().MonotonicMillis();
}

// A session that still answers keepalive pings but acknowledges nothing
// (a broker wedged behind its own queue, a proxy whose far side is gone)
// would hold the window's events until the connection broke, which may be
// never. After ack_timeout_ms without any PUBACK while publishes wait, the
// link ends the session as lost: it reconnects (to the next endpoint if
// there is one) and the unacknowledged events go out again, in order.
bool BackboneLink::Impl::CheckAckProgress() {
  if (options_.ack_timeout_ms <= 0 || !session_up_ || state_ != LinkState::kConnected || returning_) return false;
  if (inflight_.empty() && control_mids_.empty()) return false;
  const int64_t now = SystemClock().MonotonicMillis();
  if (pubacks_ != pubacks_at_check_) {
    pubacks_at_check_ = pubacks_;
    ack_progress_ms_ = now;
    return false;
  }
  const int64_t waited = now - ack_progress_ms_;
  if (waited < options_.ack_timeout_ms) return false;
  // PUBACKs may be waiting in the socket after the loop was held up
  // elsewhere: those are read first, and the check comes again next time.
  const int fd = client_ && !client_lost_ ? mosquitto_socket(client_.get()) : -1;
  pollfd readable{fd, POLLIN, 0};
  if (fd >= 0 && poll(&readable, 1, 0) > 0) return false;
  ++stats_.ack_timeouts;
  const size_t waiting = inflight_.size() + control_mids_.size();
  WS_LOG_WARN(kLog, "no PUBACK from the broker in time; ending the session",
              {{"endpoint", stats_.endpoint},
               {"waited_ms", std::to_string(waited)},
               {"publishes_waiting", std::to_string(waiting)}});
  HandleConnectionEnd(attempt_, /*was_up=*/true,
                      "no PUBACK for " + std::to_string(waited) + " ms while " + std::to_string(waiting) +
                          " publishes waited (backbone.ack_timeout_s)");
  return true;
}

void BackboneLink::Impl::OnMiscTimer() {
  misc_timer_ = loop_->AddTimer(kMiscIntervalMs, [this] { OnMiscTimer(); });
  if (CheckAckProgress()) return;
  if (!client_ || client_lost_ || !watch_fd_.valid()) return;
  int rc = mosquitto_loop_misc(client_.get());
  if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
    WS_LOG_DEBUG(kLog, "keepalive check", {{"status", MosquittoStatus(rc, "mosquitto_loop_misc").ToString()}});
  }
  SyncSocket();
}

void BackboneLink::Impl::SyncSocket() {
  const int fd = (client_ && !client_lost_) ? mosquitto_socket(client_.get()) : -1;
  if (watch_fd_.valid() && watched_socket_ != fd) UnregisterSocket();
  if (fd < 0) return;
  const uint32_t want = EventLoop::kReadable | (mosquitto_want_write(client_.get()) ? EventLoop::kWritable : 0u);
  Status s;
  if (!watch_fd_.valid()) {
    UniqueFd dup(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!dup.valid()) {
      s = ErrnoStatus(errno, "duplicate the broker socket");
    } else {
      s = loop_->AddFd(dup.get(), want, [this](uint32_t events) { OnSocketReady(events); });
      if (s.ok()) {
        watch_fd_ = std::move(dup);
        watched_socket_ = fd;
      }
    }
  } else if (want != registered_events_) {
    s = loop_->ModifyFd(watch_fd_.get(), want);
  }
  if (s.ok()) {
    registered_events_ = want;
    return;
  }
  // A socket the loop cannot watch is a dead connection: end it like one.
  WS_LOG_ERROR(kLog, "cannot watch the broker socket", {{"error", s.ToString()}});
  UnregisterSocket();
  bool was_up = session_up_;
  session_up_ = false;
  client_lost_ = true;
  uint64_t attempt = attempt_;
  PostGuarded([this, attempt, was_up, why = s.ToString()] { HandleConnectionEnd(attempt, was_up, why); });
}

void BackboneLink::Impl::UnregisterSocket() {
  if (!watch_fd_.valid()) return;
  loop_->RemoveFd(watch_fd_.get());
  watch_fd_.Reset();
  watched_socket_ = -1;
  registered_events_ = 0;
}

void BackboneLink::Impl::CancelTimer(TimerId* id) {
  if (*id != 0) loop_->CancelTimer(*id);
  *id = 0;
}

void BackboneLink::Impl::CancelAllTimers() {
  CancelTimer(&misc_timer_);
  CancelTimer(&reconnect_timer_);
  CancelTimer(&connect_timer_);
  CancelTimer(&retry_timer_);
  CancelTimer(&lease_retry_timer_);
  CancelTimer(&stop_timer_);
  CancelTimer(&probe_timer_);
  CancelTimer(&return_timer_);
  CancelTimer(&throttle_timer_);
  CancelTimer(&ack_hold_timer_);
}

// ---------------------------------------------------------------------------
// Delivery

void BackboneLink::Impl::OnAppended() {
  outbox_may_have_more_ = true;
  higher_may_be_waiting_ = true;
  if (lease_outstanding_) {
    appended_during_lease_ = true;
  } else {
    MaybeLease();
  }
}

void BackboneLink::Impl::ScheduleTurn() {
  if (turn_posted_) return;
  turn_posted_ = true;
  PostGuarded([this] { Turn(); });
}

// Runs once per loop turn after PUBACKs arrived: one Ack call for all of
// them, then whatever the freed window allows.
void BackboneLink::Impl::Turn() {
  turn_posted_ = false;
  HoldOrFlushAcks();
  if (state_ == LinkState::kStopping) {
    CheckStopProgress();
    return;
  }
  if (returning_) {
    CheckReturnProgress();
    return;
  }
  MaybeRetry();
  Pump();
  SyncSocket();
  MaybeLease();
}

void BackboneLink::Impl::MaybeLease() {
  if (!session_up_ || state_ != LinkState::kConnected || returning_ || retry_pending_ || lease_outstanding_ ||
      !outbox_may_have_more_ || lease_retry_timer_ != 0) {
    return;
  }
  const size_t budget = lease_budget();
  if (leased_held() >= budget) return;
  // Bulk may hold at most 7/8 of what the link leases. The store hands out
  // the highest class first but cannot be asked for "anything but bulk", so
  // once bulk holds its share the link leases one event at a time, and only
  // after an append: that one is the new higher-class event if there is one
  // (or, at worst, one more bulk event, still within the budget). Higher
  // classes are published ahead of the bulk events waiting in ready_.
  const size_t reserve = std::max<size_t>(1, budget / 8);
  const size_t bulk_share = budget - reserve;
  const size_t bulk_held = bulk_inflight_ + ready_[static_cast<size_t>(Priority::kBulk)].size();
  size_t room = budget - leased_held();
  if (bulk_held >= bulk_share) {
    if (!higher_may_be_waiting_) return;
    room = 1;
  } else {
    room = std::min(room, bulk_share - bulk_held);
  }
  lease_outstanding_ = true;
  appended_during_lease_ = false;
  leases_held_ = true;
  const uint64_t attempt = attempt_;
  std::weak_ptr<AliveToken> alive = alive_;
  EventLoop* loop = loop_;
  // The completion runs on the store's thread: it touches only the loop
  // (which outlives the link) and hands the result over.
  outbox_->Lease(room, [loop, alive, this, attempt, room](Result<std::vector<LeasedEvent>> result) {
    loop->Post([alive, this, attempt, room, result = std::move(result)]() mutable {
      if (alive.lock()) OnLeased(attempt, room, std::move(result));
    });
  });
}

void BackboneLink::Impl::OnLeased(uint64_t attempt, size_t requested, Result<std::vector<LeasedEvent>> result) {
  lease_outstanding_ = false;
  if (attempt != attempt_ || !session_up_ || state_ != LinkState::kConnected) {
    // The session this lease was for has ended; its ResetLeases reached the
    // store after this lease, so these events will be handed out again.
    MaybeRetry();
    MaybeLease();
    return;
  }
  if (!result.ok()) {
    WS_LOG_WARN(kLog, "outbox lease failed", {{"error", result.status().ToString()}});
    lease_retry_timer_ = loop_->AddTimer(kLeaseErrorRetryMs, [this] {
      lease_retry_timer_ = 0;
      MaybeLease();
    });
    return;
  }
  std::vector<LeasedEvent> events = std::move(result).value();
  if (!appended_during_lease_) {
    // Leases come highest class first: a short lease, or one that ends in
    // bulk, leaves nothing above bulk behind.
    if (events.size() < requested) outbox_may_have_more_ = false;
    if (events.size() < requested || events.back().priority == Priority::kBulk) higher_may_be_waiting_ = false;
  }
  if (!outbox_may_have_more_ && nack_poll_until_ms_ != 0 && lease_retry_timer_ == 0) {
    // Nacked events come due on the wall clock, and no append announces
    // them: look again shortly while any may still be waiting.
    if (SystemClock().MonotonicMillis() < nack_poll_until_ms_) {
      lease_retry_timer_ = loop_->AddTimer(kNackPollMs, [this] {
        lease_retry_timer_ = 0;
        outbox_may_have_more_ = true;
        MaybeLease();
      });
    } else {
      nack_poll_until_ms_ = 0;
    }
  }
  if (retry_pending_) {
    // A transient failure paused publishing while this lease was out: these
    // go out again after the backoff, from the oldest undelivered event on.
    retry_reset_ = retry_reset_ || !events.empty();
  } else {
    for (LeasedEvent& leased : events) {
      ready_[static_cast<size_t>(leased.priority)].push_back(std::move(leased));
      ++ready_count_;
    }
  }
  Pump();
  SyncSocket();
  MaybeRetry();
  MaybeLease();
}

// Publishes waiting events, highest class first, while the window has room
// and the socket takes them: once the library holds unwritten packets, every
// further publish would only try the full socket again, so the rest waits
// for writability (OnSocketReady pumps again).
void BackboneLink::Impl::Pump() {
  // A run of PUBLISHes goes out corked: the library writes each one with its
  // own send(), and without the cork each would become its own TCP segment
  // (and, on the broker's side, its own wake-up). Uncorking at the end of
  // the run sends what is left at once, so nothing waits.
  const int fd = (client_ && !client_lost_) ? mosquitto_socket(client_.get()) : -1;
  const bool cork = fd >= 0 && ready_count_ > 1 && publish_room(2);
  const int on = 1;
  if (cork) static_cast<void>(setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on));  // only an optimisation
  PumpRun();
  if (cork) {
    const int off = 0;
    // Reached through the library's descriptor, which a failed publish may
    // have closed: then there is nothing to uncork.
    if (client_ && !client_lost_ && mosquitto_socket(client_.get()) == fd) {
      static_cast<void>(setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off));
    }
  }
}

void BackboneLink::Impl::PumpRun() {
  while (ready_count_ > 0 && publish_room(1)) {
    // A transient failure pauses publishing: what follows is sent again
    // after the backoff, from the oldest undelivered event on.
    if (!session_up_ || state_ != LinkState::kConnected || returning_ || retry_pending_) return;
    if (!client_ || client_lost_ || mosquitto_want_write(client_.get())) return;
    std::deque<LeasedEvent>* queue = nullptr;
    for (std::deque<LeasedEvent>& q : ready_) {
      if (!q.empty()) {
        queue = &q;
        break;
      }
    }
    if (queue == nullptr) return;
    if (!publish_bucket_.unlimited()) {
      // One token (byte) to start; the rest of the PUBLISH is charged after
      // it went out, so one event larger than a second's worth still goes.
      TokenBucket::Decision d = publish_bucket_.TryAcquire();
      if (!d.allowed) {
        WaitForRateLimit(d.retry_after_ms);
        return;
      }
    }
    LeasedEvent leased = std::move(queue->front());
    queue->pop_front();
    --ready_count_;
    const uint64_t bytes = PublishEvent(leased);
    if (bytes > 1) publish_bucket_.Charge(static_cast<double>(bytes - 1));
  }
}

void BackboneLink::Impl::WaitForRateLimit(int64_t delay_ms) {
  if (throttle_timer_ != 0) return;
  ++stats_.rate_limit_pauses;
  throttle_timer_ = loop_->AddTimer(std::max(delay_ms, kRateLimitMinWaitMs), [this] {
    throttle_timer_ = 0;
    ScheduleTurn();
  });
}

// Forgets the leased events not yet published; the caller makes sure the
// leases are reset before anything newer goes out.
void BackboneLink::Impl::DropReady() {
  for (std::deque<LeasedEvent>& q : ready_) q.clear();
  ready_count_ = 0;
}

uint64_t BackboneLink::Impl::PublishEvent(const LeasedEvent& leased) {
  const int64_t seq = leased.sequence;
  const std::string& topic = leased.topic;
  std::string structured;
  std::string_view payload;
  PropertyList properties;
  uint64_t packet_bytes = 0;
  // Checked when it was leased, so this fails only for a store that lies.
  if (Status s = DecodeEventRecordInto(leased.record, leased.id, &publishing_); !s.ok()) {
    DeadLetter(seq, "record unreadable: " + s.message());
    return 0;
  }
  if (mqtt5()) {
    BinaryModeProperties binary = EncodeBinaryMode(publishing_);
    payload = BinaryModePayload(publishing_);
    packet_bytes = Mqtt5PublishPacketSize(topic, binary, payload.size());
    if (broker_max_packet_ != 0 && packet_bytes > broker_max_packet_) {
      DeadLetter(seq, "PUBLISH of " + std::to_string(packet_bytes) + " bytes exceeds the broker's maximum packet size of " +
                          std::to_string(broker_max_packet_) + " bytes");
      return 0;
    }
    Status s;
    if (!binary.content_type.empty()) s = properties.AddString(MQTT_PROP_CONTENT_TYPE, binary.content_type);
    for (const auto& [name, value] : binary.user_properties) {
      if (!s.ok()) break;
      s = properties.AddStringPair(MQTT_PROP_USER_PROPERTY, name, value);
    }
    if (!s.ok()) {
      DeadLetter(seq, "attributes cannot travel as MQTT 5 properties: " + s.ToString());
      return 0;
    }
  } else {
    structured = EncodeStructuredMode(publishing_);
    payload = structured;
    // Fixed header (at most 5 bytes), topic with its length, packet id.
    packet_bytes = 5 + 2 + topic.size() + 2 + payload.size();
  }
  if (payload.size() > kMaxPayloadBytes) {
    DeadLetter(seq, "payload of " + std::to_string(payload.size()) + " bytes exceeds the MQTT limit");
    return 0;
  }
  if (topic.empty() || topic.find('\0') != std::string::npos) {
    DeadLetter(seq, "topic name invalid: empty or containing NUL");
    return 0;
  }
  int mid = 0;
  int rc = mosquitto_publish_v5(client_.get(), &mid, topic.c_str(), static_cast<int>(payload.size()), payload.data(),
                                kQos1, /*retain=*/false, mqtt5() ? properties.get() : nullptr);
  if (rc == MOSQ_ERR_SUCCESS) {
    const bool bulk = leased.priority == Priority::kBulk;
    StartAckClockIfIdle();
    inflight_[mid] = InflightEvent{seq, bulk, SystemClock().MonotonicNanos()};
    if (bulk) ++bulk_inflight_;
    ++stats_.published;
    return packet_bytes;
  }
  Status s = MosquittoStatus(rc, "publish to " + topic);
  switch (rc) {
    // What the library refuses for this message alone, on any connection.
    case MOSQ_ERR_OVERSIZE_PACKET:
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_INVAL:  // the topic check: wildcards or an empty level
    case MOSQ_ERR_MALFORMED_UTF8:
      DeadLetter(seq, s.ToString());
      return 0;
    // The connection is failing under us; libmosquitto reports its end on
    // the next read. The pause below keeps anything newer from going out
    // first, and the session's end (or the retry) hands this event out again.
    case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_LOST:
    case MOSQ_ERR_ERRNO:
      WS_LOG_DEBUG(kLog, "publish failed on a failing connection",
                   {{"sequence", std::to_string(seq)}, {"error", s.ToString()}});
      PauseForRetry(/*reset_leases=*/true);
      return 0;
    default:
      TransientFailure(seq, s.ToString());
      return 0;
  }
}

void BackboneLink::Impl::OnPublished(int mid, int reason_code) {
  ++pubacks_;
  if (control_mids_.erase(mid) > 0) {
    if (reason_code >= 0x80) {
      WS_LOG_WARN(kLog, "broker refused a presence message", {{"reason", DescribeReasonCode(reason_code)}});
    }
    if (mid == offline_mid_) offline_acked_ = true;
    ScheduleTurn();
    return;
  }
  auto it = inflight_.find(mid);
  if (it == inflight_.end()) return;
  const int64_t seq = it->second.sequence;
  publish_limit_.OnAck((SystemClock().MonotonicNanos() - it->second.published_ns) / 1000);
  if (it->second.bulk) --bulk_inflight_;
  inflight_.erase(it);
  if (reason_code < 0x80) {
    ++stats_.acked;
    retry_attempt_ = 0;
    QueueAck(seq);
  } else if (IsPermanentPublishRefusal(reason_code)) {
    DeadLetter(seq, "broker refused the event: " + DescribeReasonCode(reason_code));
  } else {
    TransientFailure(seq, "broker answered " + DescribeReasonCode(reason_code));
  }
  ScheduleTurn();
}

void BackboneLink::Impl::QueueAck(int64_t sequence) {
  pending_acks_.push_back(sequence);
  ++acks_unconfirmed_;
  if (pending_acks_.size() >= kAckBatch) FlushAcks();
}

// Each Ack call is a store transaction of its own, which writes every page
// it changed into the WAL, and with the publish limit a turn often reads
// only a dozen PUBACKs. While more PUBACKs are on their way and the window
// still has room for the publish limit, fewer than kAckBatch acks wait for
// the turns those PUBACKs bring, at most kAckHoldMs: the timer is not
// cancelled by an earlier flush (one timer per kAckHoldMs, not one per
// turn), so it may flush a later hold sooner, never later. In five outage
// drains of 200,000 events with a subscriber on the broker, the store's
// thread spent 123-154 ticks (of 10 ms) against 167-190 without the hold.
void BackboneLink::Impl::HoldOrFlushAcks() {
  if (pending_acks_.empty()) return;
  const bool more_coming = !inflight_.empty() && session_up_ && state_ == LinkState::kConnected && !returning_;
  const bool window_room = used_window() + publish_limit_.limit() <= window_;
  if (pending_acks_.size() >= kAckBatch || !more_coming || !window_room) {
    FlushAcks();
    return;
  }
  if (ack_hold_timer_ != 0) return;
  ack_hold_timer_ = loop_->AddTimer(kAckHoldMs, [this] {
    ack_hold_timer_ = 0;
    FlushAcks();
  });
}

void BackboneLink::Impl::FlushAcks() {
  if (pending_acks_.empty()) return;
  std::vector<int64_t> batch;
  batch.swap(pending_acks_);
  const size_t n = batch.size();
  std::weak_ptr<AliveToken> alive = alive_;
  EventLoop* loop = loop_;
  outbox_->Ack(std::move(batch), [loop, alive, this, n](Status s) {
    // Store thread. A failed Ack leaves the events in the outbox; they are
    // sent again later: a duplicate, never a loss.
    if (!s.ok()) WS_LOG_ERROR(kLog, "outbox ack failed", {{"events", std::to_string(n)}, {"error", s.ToString()}});
    loop->Post([alive, this, n] {
      if (!alive.lock()) return;
      acks_unconfirmed_ -= std::min(acks_unconfirmed_, n);
      ScheduleTurn();
    });
  });
}

void BackboneLink::Impl::ResetLeases() {
  outbox_->ResetLeases();
  leases_held_ = false;
  outbox_may_have_more_ = true;
}

void BackboneLink::Impl::DeadLetter(int64_t sequence, std::string reason) {
  ++stats_.dead_lettered;
  WS_LOG_WARN(kLog, "event dead-lettered", {{"sequence", std::to_string(sequence)}, {"reason", reason}});
  outbox_->DeadLetter(sequence, std::move(reason), [sequence](Status s) {
    // Store thread. The event stays leased; the next reset hands it out again.
    if (!s.ok()) {
      WS_LOG_ERROR(kLog, "outbox dead-letter failed",
                   {{"sequence", std::to_string(sequence)}, {"error", s.ToString()}});
    }
  });
  ScheduleTurn();
}

void BackboneLink::Impl::TransientFailure(int64_t sequence, const std::string& why) {
  ++stats_.transient_failures;
  WS_LOG_WARN(kLog, "event not accepted this time; will retry",
              {{"sequence", std::to_string(sequence)}, {"reason", why}});
  // Leasing pauses for the backoff (the broker is likely refusing more than
  // this one event); the event itself goes back to the outbox, due when the
  // pause ends, while the events in flight behind it complete as usual.
  PauseForRetry(/*reset_leases=*/false);
  const int64_t resume_ms = retry_resume_ms_;
  const int64_t retry_in_us = std::max<int64_t>(resume_ms - SystemClock().MonotonicMillis(), 0) * 1000;
  ++nacks_outstanding_;
  const uint64_t attempt = attempt_;
  std::weak_ptr<AliveToken> alive = alive_;
  EventLoop* loop = loop_;
  outbox_->Nack({sequence}, retry_in_us, [loop, alive, this, attempt, sequence, resume_ms](Status s) {
    // Store thread: hand the answer to the loop.
    loop->Post([alive, this, attempt, sequence, resume_ms, s = std::move(s)] {
      if (alive.lock()) OnNacked(attempt, sequence, resume_ms, s);
    });
  });
}

void BackboneLink::Impl::OnNacked(uint64_t attempt, int64_t sequence, int64_t resume_ms, const Status& s) {
  // A session that ended since reset every lease; nothing left to do.
  if (attempt != attempt_) return;
  if (nacks_outstanding_ > 0) --nacks_outstanding_;
  if (s.ok()) {
    ++stats_.nacked;
    nack_poll_until_ms_ = std::max(nack_poll_until_ms_, resume_ms + kNackPollWindowMs);
  } else {
    // Without a Nack the event stays leased: after the backoff, start again
    // from the oldest undelivered event so that it goes out again.
    WS_LOG_DEBUG(kLog, "outbox did not take the event back; retrying from the oldest undelivered event",
                 {{"sequence", std::to_string(sequence)}, {"error", s.ToString()}});
    retry_reset_ = true;
  }
  MaybeRetry();
}

// Exponential backoff with full jitter: random_between(0, min(cap, base * 2^n)).
int64_t BackboneLink::Impl::NextRetryDelayMs() {
  int64_t ceiling = options_.retry_min_ms;
  for (uint32_t i = 0; i < retry_attempt_ && ceiling < options_.retry_max_ms; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, options_.retry_max_ms);
  ++retry_attempt_;
  return RandomBetween(0, ceiling);
}

void BackboneLink::Impl::PauseForRetry(bool reset_leases) {
  if (reset_leases) retry_reset_ = true;
  // Leased events not yet published would otherwise go out before the one
  // that failed: they are handed out again after the backoff, in order.
  if (ready_count_ > 0) {
    DropReady();
    retry_reset_ = true;
  }
  if (retry_pending_) return;
  retry_pending_ = true;
  retry_due_ = false;
  const int64_t delay_ms = NextRetryDelayMs();
  retry_resume_ms_ = SystemClock().MonotonicMillis() + delay_ms;
  retry_timer_ = loop_->AddTimer(delay_ms, [this] {
    retry_timer_ = 0;
    retry_due_ = true;
    MaybeRetry();
  });
}

// After the backoff, once every Nack was answered: lease again. Where an
// event could not be handed back, wait until nothing is in flight and start
// again from the oldest undelivered event, so the failed one goes out again
// before anything newer.
void BackboneLink::Impl::MaybeRetry() {
  if (!retry_pending_ || !retry_due_ || !session_up_ || lease_outstanding_ || nacks_outstanding_ > 0) return;
  if (retry_reset_ && !inflight_.empty()) return;
  retry_pending_ = false;
  retry_due_ = false;
  if (retry_reset_) {
    retry_reset_ = false;
    FlushAcks();
    ResetLeases();
  }
  outbox_may_have_more_ = true;
  higher_may_be_waiting_ = true;
  MaybeLease();
}

// ---------------------------------------------------------------------------
// Presence and stopping

Status BackboneLink::Impl::PublishState(const std::string& payload, int* mid) {
  if (!client_) return FailedPrecondition("no broker connection");
  PropertyList properties;
  if (mqtt5()) WS_TRY(properties.AddString(MQTT_PROP_CONTENT_TYPE, "application/json"));
  int rc = mosquitto_publish_v5(client_.get(), mid, state_topic_.c_str(), static_cast<int>(payload.size()),
                                payload.data(), kQos1, RetainPresence(), mqtt5() ? properties.get() : nullptr);
  return MosquittoStatus(rc, "publish to " + state_topic_);
}

std::string BackboneLink::Impl::OnlinePayload() const {
  OutboxStats st = outbox_->Stats();
  uint64_t backlog = 0;
  for (const ClassBacklog& b : st.backlog) backlog += b.count;
  std::string out = "{\"state\":\"online\",\"node\":";
  AppendJsonString(&out, options_.node_id);
  out += ",\"version\":";
  AppendJsonString(&out, options_.version);
  out += ",\"boot_id\":";
  AppendJsonString(&out, options_.boot_id);
  out += ",\"backlog\":";
  out += std::to_string(backlog);
  out += '}';
  return out;
}

std::string BackboneLink::Impl::OfflinePayload() const {
  std::string out = "{\"state\":\"offline\",\"node\":";
  AppendJsonString(&out, options_.node_id);
  out += ",\"boot_id\":";
  AppendJsonString(&out, options_.boot_id);
  out += '}';
  return out;
}

// The retained "offline" state, once per session (Stop after a return to
// the primary has begun says it only once).
void BackboneLink::Impl::PublishOffline() {
  if (offline_published_) return;
  offline_published_ = true;
  offline_acked_ = false;
  int mid = -1;
  Status s = PublishState(OfflinePayload(), &mid);
  if (s.ok()) {
    StartAckClockIfIdle();
    control_mids_.insert(mid);
    offline_mid_ = mid;
  } else {
    WS_LOG_WARN(kLog, "could not publish the offline state", {{"error", s.ToString()}});
    offline_acked_ = true;
  }
}

void BackboneLink::Impl::CheckStopProgress() {
  if (state_ != LinkState::kStopping || disconnect_sent_) return;
  if (offline_acked_ && inflight_.empty()) SendDisconnect();
}

void BackboneLink::Impl::SendDisconnect() {
  if (disconnect_sent_) return;
  disconnect_sent_ = true;
  CancelTimer(&stop_timer_);
  FlushAcks();
  if (!session_up_ || !client_) {
    FinishStop();
    return;
  }
  // Normal disconnection (0): the broker discards the Will; the retained
  // "offline" published by Stop says the same thing.
  int rc = mosquitto_disconnect_v5(client_.get(), MQTT_RC_NORMAL_DISCONNECTION, nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    WS_LOG_WARN(kLog, "disconnect", {{"status", MosquittoStatus(rc, "mosquitto_disconnect_v5").ToString()}});
  }
  // Still open: the DISCONNECT waits for the socket to take it.
  SyncSocket();
  stop_timer_ = loop_->AddTimer(kDisconnectGraceMs, [this] {
    stop_timer_ = 0;
    FinishStop();
  });
}

void BackboneLink::Impl::FinishStop() {
  if (state_ == LinkState::kStopped) return;
  attempt_ended_ = true;
  returning_ = false;
  CancelAllTimers();
  CancelPrimaryProbe();
  ReleaseClient();
  session_up_ = false;
  FlushAcks();
  ClearInflight();
  control_mids_.clear();
  if (leases_held_) ResetLeases();
  state_ = LinkState::kStopped;
  WS_LOG_INFO(kLog, "stopped", {{"endpoint", stats_.endpoint}});
  std::vector<std::function<void()>> done;
  done.swap(stop_done_);
  // A callback may destroy the link: nothing here touches it afterwards.
  for (auto& fn : done) {
    if (fn) fn();
  }
}

// ---------------------------------------------------------------------------
// BackboneLink

Result<std::unique_ptr<BackboneLink>> BackboneLink::Create(EventLoop* loop, Outbox* outbox, BackboneOptions options) {
  WS_TRY(MosquittoLibraryInit());
  WS_TRY(ValidateOptions(loop, outbox, options));
  if (options.node_id.empty()) options.node_id = options.client_id;
  auto impl = std::make_unique<Impl>(loop, outbox, std::move(options));
  return std::unique_ptr<BackboneLink>(new BackboneLink(std::move(impl)));
}

BackboneLink::BackboneLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BackboneLink::~BackboneLink() = default;

void BackboneLink::Start() { impl_->Start(); }
void BackboneLink::Stop(std::function<void()> done) { impl_->Stop(std::move(done)); }
void BackboneLink::NotifyAppended() { impl_->NotifyAppended(); }
BackboneStats BackboneLink::Stats() const { return impl_->Stats(); }

}  // namespace ws
