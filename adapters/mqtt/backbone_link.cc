#include "adapters/mqtt/backbone_link.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "adapters/mqtt/cloudevents_mqtt.h"
#include "adapters/mqtt/mosquitto_api.h"
#include "platform/clock.h"
#include "platform/log.h"
#include "platform/unique_fd.h"

namespace ws {
namespace {

constexpr std::string_view kLog = "backbone";
constexpr size_t kAckBatch = 64;              // acks gathered before one outbox call
constexpr int64_t kMiscIntervalMs = 1000;     // mosquitto_loop_misc: keepalive pings
constexpr int64_t kDisconnectGraceMs = 1000;  // after DISCONNECT, before giving up on a clean close
constexpr int64_t kLeaseErrorRetryMs = 1000;  // the store failed a Lease: ask again after this
constexpr uint32_t kMaxWindow = 65535;        // Receive Maximum is a two-byte integer
constexpr uint64_t kMaxPayloadBytes = 268'435'455;  // the largest MQTT remaining length
constexpr int kQos1 = 1;

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
  }
  if (o.client_id.empty()) return InvalidArgument("backbone: client_id is required");
  if (o.topic_prefix.empty() || o.topic_prefix.find_first_of("+#") != std::string::npos) {
    return InvalidArgument("backbone: topic_prefix must be a non-empty topic without wildcards");
  }
  if (o.inflight_window == 0) return InvalidArgument("backbone: inflight_window must be at least 1");
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
  using TimerId = EventLoop::TimerId;
  // Work posted from other threads holds a weak reference to this; the link
  // is destroyed on the loop thread, so a posted task that finds it expired
  // knows the link is gone.
  struct AliveToken {};

  static void OnConnectCallback(mosquitto* m, void* self, int rc, int flags, const mosquitto_property* props);
  static void OnDisconnectCallback(mosquitto* m, void* self, int rc, const mosquitto_property* props);
  static void OnPublishCallback(mosquitto* m, void* self, int mid, int reason_code, const mosquitto_property* props);

  // Connection lifecycle.
  void Connect();
  Status OpenClient(const EndpointConfig& endpoint);
  void OnConnected(int rc, const mosquitto_property* props);
  void OnDisconnected(int rc);
  void HandleConnectionEnd(uint64_t attempt, bool was_up, int rc);
  void ConnectAttemptFailed(const Status& why);
  void ScheduleReconnect();
  void EndSession();
  void ReleaseClient();

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
  void PublishEvent(const LeasedEvent& leased);
  void OnPublished(int mid, int reason_code);
  void QueueAck(int64_t sequence);
  void FlushAcks();
  void ResetLeases();
  void DeadLetter(int64_t sequence, std::string reason);
  void TransientFailure(int64_t sequence, const std::string& why);
  void PauseForRetry();
  void MaybeRetry();

  // Presence and stopping.
  Status PublishState(const std::string& payload, int* mid);
  std::string OnlinePayload() const;
  std::string OfflinePayload() const;
  void CheckStopProgress();
  void SendDisconnect();
  void FinishStop();

  template <typename Fn>
  void PostGuarded(Fn fn);
  int64_t RandomBetween(int64_t lo, int64_t hi);
  bool mqtt5() const { return options_.protocol == MqttProtocol::kMqtt5; }
  size_t used_window() const { return inflight_.size() + control_mids_.size(); }

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
  int64_t previous_sleep_ms_ = 0;  // decorrelated jitter state; 0 after a successful connect

  TimerId misc_timer_ = 0;
  TimerId reconnect_timer_ = 0;
  TimerId connect_timer_ = 0;
  TimerId retry_timer_ = 0;
  TimerId lease_retry_timer_ = 0;
  TimerId stop_timer_ = 0;

  // Delivery state of the current session.
  uint32_t window_ = 0;                          // min(our window, the broker's Receive Maximum)
  uint32_t broker_max_packet_ = 0;               // 0: the broker gave none
  std::unordered_map<int, int64_t> inflight_;    // message id -> outbox sequence
  std::unordered_set<int> control_mids_;         // presence messages awaiting PUBACK
  bool lease_outstanding_ = false;               // at most one Lease at a time
  bool outbox_may_have_more_ = true;
  bool appended_during_lease_ = false;
  bool leases_held_ = false;                     // leased since the last ResetLeases
  std::vector<int64_t> pending_acks_;
  bool turn_posted_ = false;
  bool retry_pending_ = false;                   // a transient failure: pause, then lease from the oldest
  bool retry_due_ = false;
  uint32_t retry_attempt_ = 0;

  std::vector<std::function<void()>> stop_done_;
  int offline_mid_ = -1;
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
           (static_cast<uint64_t>(SystemClock().WallMicros()) << 7) ^ (static_cast<uint64_t>(getpid()) << 40)) {
  stats_.endpoint = EndpointLabel(options_.endpoints.front());
}

BackboneLink::Impl::~Impl() {
  alive_.reset();
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
  offline_acked_ = false;
  disconnect_sent_ = false;
  int mid = -1;
  Status s = PublishState(OfflinePayload(), &mid);
  if (s.ok()) {
    control_mids_.insert(mid);
    offline_mid_ = mid;
  } else {
    WS_LOG_WARN(kLog, "could not publish the offline state", {{"error", s.ToString()}});
    offline_acked_ = true;
  }
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

BackboneStats BackboneLink::Impl::Stats() const {
  BackboneStats s = stats_;
  s.state = state_;
  s.inflight = static_cast<uint32_t>(inflight_.size());
  s.window = window_;
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
  const EndpointConfig& ep = options_.endpoints[endpoint_index_];
  stats_.endpoint = EndpointLabel(ep);
  state_ = LinkState::kConnecting;
  WS_LOG_DEBUG(kLog, "connecting", {{"endpoint", stats_.endpoint}, {"host", ep.host}, {"port", std::to_string(ep.port)}});
  Status s = OpenClient(ep);
  if (!s.ok()) {
    ConnectAttemptFailed(s);
    return;
  }
  SyncSocket();
  if (attempt_ended_ || client_lost_) return;  // SyncSocket found the socket unusable
  uint64_t attempt = attempt_;
  connect_timer_ = loop_->AddTimer(options_.connect_timeout_ms, [this, attempt] {
    connect_timer_ = 0;
    if (attempt != attempt_ || attempt_ended_ || session_up_) return;
    ConnectAttemptFailed(Status(StatusCode::kDeadlineExceeded,
                                "no CONNACK within " + std::to_string(options_.connect_timeout_ms) + " ms"));
  });
}

Status BackboneLink::Impl::OpenClient(const EndpointConfig& endpoint) {
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
  mosquitto_connect_v5_callback_set(m, &Impl::OnConnectCallback);
  mosquitto_disconnect_v5_callback_set(m, &Impl::OnDisconnectCallback);
  mosquitto_publish_v5_callback_set(m, &Impl::OnPublishCallback);

  const std::string will = OfflinePayload();
  PropertyList will_properties;
  if (mqtt5()) WS_TRY(will_properties.AddString(MQTT_PROP_CONTENT_TYPE, "application/json"));
  int rc = mosquitto_will_set_v5(m, state_topic_.c_str(), static_cast<int>(will.size()), will.data(), kQos1,
                                 /*retain=*/true, mqtt5() ? will_properties.get() : nullptr);
  WS_TRY(MosquittoStatus(rc, "set the Last Will"));
  // On success the library owns the list.
  if (mqtt5()) will_properties.Release();

  rc = mosquitto_connect_bind_async(m, endpoint.host.c_str(), endpoint.port, static_cast<int>(options_.keepalive_s),
                                    nullptr);
  return MosquittoStatus(rc, "connect to " + endpoint.host + ":" + std::to_string(endpoint.port));
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

void BackboneLink::Impl::OnConnected(int rc, const mosquitto_property* props) {
  if (rc != 0) {
    // libmosquitto closes the connection and reports it through on_disconnect.
    std::string why = mqtt5() ? DescribeReasonCode(rc) : std::string(mosquitto_connack_string(rc));
    WS_LOG_WARN(kLog, "broker refused the connection", {{"endpoint", stats_.endpoint}, {"reason", why}});
    return;
  }
  CancelTimer(&connect_timer_);
  session_up_ = true;
  if (state_ == LinkState::kConnecting) state_ = LinkState::kConnected;
  ++stats_.connects;
  previous_sleep_ms_ = 0;
  window_ = std::min(options_.inflight_window, kMaxWindow);
  broker_max_packet_ = 0;
  if (props != nullptr) {
    uint16_t receive_maximum = 0;
    if (mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &receive_maximum, false) != nullptr &&
        receive_maximum > 0) {
      window_ = std::min<uint32_t>(window_, receive_maximum);
    }
    uint32_t max_packet = 0;
    if (mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &max_packet, false) != nullptr) {
      broker_max_packet_ = max_packet;
    }
  }
  WS_LOG_INFO(kLog, "connected",
              {{"endpoint", stats_.endpoint},
               {"protocol", mqtt5() ? "mqtt5" : "mqtt311"},
               {"window", std::to_string(window_)},
               {"broker_max_packet", std::to_string(broker_max_packet_)}});
  if (state_ == LinkState::kStopping) return;
  // Library calls stay out of library callbacks (they run with the
  // library's locks held): the birth message and the first lease follow on
  // the next turn, birth first.
  const uint64_t attempt = attempt_;
  PostGuarded([this, attempt] {
    if (attempt != attempt_ || !session_up_ || state_ != LinkState::kConnected) return;
    int mid = -1;
    Status s = PublishState(OnlinePayload(), &mid);
    if (s.ok()) {
      control_mids_.insert(mid);
    } else {
      WS_LOG_WARN(kLog, "could not publish the online state", {{"error", s.ToString()}});
    }
    SyncSocket();
    outbox_may_have_more_ = true;
    MaybeLease();
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
  uint64_t attempt = attempt_;
  PostGuarded([this, attempt, was_up, rc] { HandleConnectionEnd(attempt, was_up, rc); });
}

void BackboneLink::Impl::HandleConnectionEnd(uint64_t attempt, bool was_up, int rc) {
  if (attempt != attempt_ || attempt_ended_) return;
  // `rc` is a MOSQ_ERR_* code, or the reason code of a DISCONNECT the broker sent.
  std::string why = rc == MOSQ_ERR_SUCCESS ? std::string("closed on request")
                                           : "code " + std::to_string(rc) + " (" + mosquitto_strerror(rc) + ")";
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
  WS_LOG_WARN(kLog, "connection lost", {{"endpoint", stats_.endpoint}, {"reason", why}});
  ScheduleReconnect();
}

void BackboneLink::Impl::ConnectAttemptFailed(const Status& why) {
  attempt_ended_ = true;
  session_up_ = false;
  ReleaseClient();
  ++stats_.connect_failures;
  if (state_ == LinkState::kStopping) {
    FinishStop();
    return;
  }
  WS_LOG_WARN(kLog, "connect failed", {{"endpoint", stats_.endpoint}, {"error", why.ToString()}});
  ScheduleReconnect();
}

void BackboneLink::Impl::ScheduleReconnect() {
  state_ = LinkState::kDisconnected;
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
  retry_pending_ = false;
  retry_due_ = false;
  // Acks first: the store runs calls in order, so what was acknowledged is
  // gone before the leases are reset and the next lease starts at the oldest.
  FlushAcks();
  inflight_.clear();
  control_mids_.clear();
  ResetLeases();
}

void BackboneLink::Impl::ReleaseClient() {
  CancelTimer(&connect_timer_);
  UnregisterSocket();
  client_.reset();
}

// ---------------------------------------------------------------------------
// Socket and timers

void BackboneLink::Impl::OnSocketReady(uint32_t events) {
  if (!client_ || client_lost_) return;
  if ((events & (EventLoop::kReadable | EventLoop::kError | EventLoop::kHangup)) != 0) {
    int rc = mosquitto_loop_read(client_.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      // A failed read has already been reported through on_disconnect.
      WS_LOG_DEBUG(kLog, "read ended", {{"status", MosquittoStatus(rc, "mosquitto_loop_read").ToString()}});
    }
  }
  if ((events & EventLoop::kWritable) != 0 && client_ && !client_lost_) {
    int rc = mosquitto_loop_write(client_.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      WS_LOG_DEBUG(kLog, "write ended", {{"status", MosquittoStatus(rc, "mosquitto_loop_write").ToString()}});
    }
  }
  SyncSocket();
}

void BackboneLink::Impl::OnMiscTimer() {
  misc_timer_ = loop_->AddTimer(kMiscIntervalMs, [this] { OnMiscTimer(); });
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
  PostGuarded([this, attempt, was_up] { HandleConnectionEnd(attempt, was_up, MOSQ_ERR_ERRNO); });
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
}

// ---------------------------------------------------------------------------
// Delivery

void BackboneLink::Impl::OnAppended() {
  outbox_may_have_more_ = true;
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
  FlushAcks();
  if (state_ == LinkState::kStopping) {
    CheckStopProgress();
    return;
  }
  MaybeRetry();
  MaybeLease();
}

void BackboneLink::Impl::MaybeLease() {
  if (!session_up_ || state_ != LinkState::kConnected || retry_pending_ || lease_outstanding_ ||
      !outbox_may_have_more_ || lease_retry_timer_ != 0) {
    return;
  }
  if (used_window() >= window_) return;
  const size_t room = window_ - used_window();
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
  if (events.size() < requested && !appended_during_lease_) outbox_may_have_more_ = false;
  for (const LeasedEvent& leased : events) {
    // A transient failure pauses publishing: what follows is sent again
    // after the backoff, from the oldest undelivered event on.
    if (!session_up_ || retry_pending_) break;
    PublishEvent(leased);
  }
  SyncSocket();
  MaybeRetry();
  MaybeLease();
}

void BackboneLink::Impl::PublishEvent(const LeasedEvent& leased) {
  const int64_t seq = leased.sequence;
  const std::string& topic = leased.topic;
  std::string structured;
  std::string_view payload;
  PropertyList properties;
  if (mqtt5()) {
    BinaryModeProperties binary = EncodeBinaryMode(leased.event);
    payload = BinaryModePayload(leased.event);
    uint64_t packet_bytes = Mqtt5PublishPacketSize(topic, binary, payload.size());
    if (broker_max_packet_ != 0 && packet_bytes > broker_max_packet_) {
      DeadLetter(seq, "PUBLISH of " + std::to_string(packet_bytes) + " bytes exceeds the broker's maximum packet size of " +
                          std::to_string(broker_max_packet_) + " bytes");
      return;
    }
    Status s;
    if (!binary.content_type.empty()) s = properties.AddString(MQTT_PROP_CONTENT_TYPE, binary.content_type);
    for (const auto& [name, value] : binary.user_properties) {
      if (!s.ok()) break;
      s = properties.AddStringPair(MQTT_PROP_USER_PROPERTY, name, value);
    }
    if (!s.ok()) {
      DeadLetter(seq, "attributes cannot travel as MQTT 5 properties: " + s.ToString());
      return;
    }
  } else {
    structured = EncodeStructuredMode(leased.event);
    payload = structured;
  }
  if (payload.size() > kMaxPayloadBytes) {
    DeadLetter(seq, "payload of " + std::to_string(payload.size()) + " bytes exceeds the MQTT limit");
    return;
  }
  if (topic.empty() || topic.find('\0') != std::string::npos) {
    DeadLetter(seq, "topic name invalid: empty or containing NUL");
    return;
  }
  int mid = 0;
  int rc = mosquitto_publish_v5(client_.get(), &mid, topic.c_str(), static_cast<int>(payload.size()), payload.data(),
                                kQos1, /*retain=*/false, mqtt5() ? properties.get() : nullptr);
  if (rc == MOSQ_ERR_SUCCESS) {
    inflight_[mid] = seq;
    ++stats_.published;
    return;
  }
  Status s = MosquittoStatus(rc, "publish to " + topic);
  switch (rc) {
    // What the library refuses for this message alone, on any connection.
    case MOSQ_ERR_OVERSIZE_PACKET:
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_INVAL:  // the topic check: wildcards or an empty level
    case MOSQ_ERR_MALFORMED_UTF8:
      DeadLetter(seq, s.ToString());
      return;
    // The connection is failing under us; libmosquitto reports its end on
    // the next read. The pause below keeps anything newer from going out
    // first, and the session's end (or the retry) hands this event out again.
    case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_LOST:
    case MOSQ_ERR_ERRNO:
      WS_LOG_DEBUG(kLog, "publish failed on a failing connection",
                   {{"sequence", std::to_string(seq)}, {"error", s.ToString()}});
      PauseForRetry();
      return;
    default:
      TransientFailure(seq, s.ToString());
      return;
  }
}

void BackboneLink::Impl::OnPublished(int mid, int reason_code) {
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
  const int64_t seq = it->second;
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
  if (pending_acks_.size() >= kAckBatch) FlushAcks();
}

void BackboneLink::Impl::FlushAcks() {
  if (pending_acks_.empty()) return;
  std::vector<int64_t> batch;
  batch.swap(pending_acks_);
  const size_t n = batch.size();
  outbox_->Ack(std::move(batch), [n](Status s) {
    // Store thread. A failed Ack leaves the events in the outbox; they are
    // sent again later: a duplicate, never a loss.
    if (!s.ok()) WS_LOG_ERROR(kLog, "outbox ack failed", {{"events", std::to_string(n)}, {"error", s.ToString()}});
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
  PauseForRetry();
}

void BackboneLink::Impl::PauseForRetry() {
  if (retry_pending_) return;
  retry_pending_ = true;
  retry_due_ = false;
  // Exponential backoff with full jitter: random_between(0, min(cap, base * 2^n)).
  int64_t ceiling = options_.retry_min_ms;
  for (uint32_t i = 0; i < retry_attempt_ && ceiling < options_.retry_max_ms; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, options_.retry_max_ms);
  ++retry_attempt_;
  retry_timer_ = loop_->AddTimer(RandomBetween(0, ceiling), [this] {
    retry_timer_ = 0;
    retry_due_ = true;
    MaybeRetry();
  });
}

// After a transient failure: once the backoff has passed and nothing is in
// flight, start again from the oldest undelivered event, so the failed one
// goes out again before anything newer is leased.
void BackboneLink::Impl::MaybeRetry() {
  if (!retry_pending_ || !retry_due_ || !session_up_ || !inflight_.empty() || lease_outstanding_) return;
  retry_pending_ = false;
  retry_due_ = false;
  FlushAcks();
  ResetLeases();
  MaybeLease();
}

// ---------------------------------------------------------------------------
// Presence and stopping

Status BackboneLink::Impl::PublishState(const std::string& payload, int* mid) {
  if (!client_) return FailedPrecondition("no broker connection");
  PropertyList properties;
  if (mqtt5()) WS_TRY(properties.AddString(MQTT_PROP_CONTENT_TYPE, "application/json"));
  int rc = mosquitto_publish_v5(client_.get(), mid, state_topic_.c_str(), static_cast<int>(payload.size()),
                                payload.data(), kQos1, /*retain=*/true, mqtt5() ? properties.get() : nullptr);
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
  CancelAllTimers();
  ReleaseClient();
  session_up_ = false;
  FlushAcks();
  inflight_.clear();
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
