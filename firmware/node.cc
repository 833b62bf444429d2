#include "firmware/node.h"

#include <unistd.h>

#include <cstdio>

#include "adapters/http/http_server.h"
#include "adapters/json/json_codec.h"
#include "adapters/mqtt/backbone_link.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "adapters/tls_crypto/crypto.h"
#include "core/routing.h"
#include "firmware/build_info.h"
#include "firmware/local_api.h"
#include "firmware/metrics_text.h"
#include "platform/clock.h"
#include "platform/event_loop.h"
#include "platform/file_system.h"
#include "platform/log.h"
#include "platform/process_stats.h"
#include "platform/signals.h"

namespace ws {
namespace {

constexpr int64_t kStopGraceMs = 5000;
// How often freed heap memory goes back to the system. A burst of requests
// leaves several MiB free in the allocator (measured: 17.1 MiB RSS after
// 300,000 batched events, 11.2 MiB after a trim); a gateway's memory budget
// should see what the node holds, not what it once needed.
constexpr int64_t kHeapTrimIntervalMs = 5000;

std::string LabelFor(Priority p) { return "class=\"" + std::string(PriorityName(p)) + "\""; }

// The store's append-to-commit latency as a Prometheus histogram (seconds,
// cumulative buckets). Written here because its sample names carry the
// _bucket/_sum/_count suffixes a MetricsText family does not.
std::string AckLatencyHistogram(const OutboxStats& st) {
  constexpr const char* kName = "waystation_store_ack_latency_seconds";
  std::string out = std::string("# HELP ") + kName + " Time from an append call to its durable commit.\n# TYPE " +
                    kName + " histogram\n";
  char line[128];
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kAckLatencyBucketCount; ++i) {
    cumulative += st.ack_latency_buckets[i];
    if (i + 1 < kAckLatencyBucketCount) {
      std::snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", kName,
                    static_cast<double>(kAckLatencyBoundsUs[i]) / 1e6, static_cast<unsigned long long>(cumulative));
    } else {
      std::snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", kName,
                    static_cast<unsigned long long>(cumulative));
    }
    out += line;
  }
  std::snprintf(line, sizeof line, "%s_sum %.6f\n%s_count %llu\n", kName,
                static_cast<double>(st.ack_latency_sum_us) / 1e6, kName,
                static_cast<unsigned long long>(st.ack_latency_count));
  out += line;
  return out;
}

}  // namespace

bool LoadConfigFile(const std::string& path, Config* config, std::vector<std::string>* errors) {
  Result<std::string> text = ReadFile(path);
  if (!text.ok()) {
    errors->push_back("(file): " + text.status().message());
    return false;
  }
  return ParseConfig(*text, config, errors);
}

void ApplyLogConfig(const LogConfig& log) {
  LogLevel level = LogLevel::kInfo;
  if (ParseLogLevel(log.level, &level)) SetLogLevel(level);
  SetLogFormat(log.format == "text" ? LogFormat::kText : LogFormat::kJson);
}

class Node::Impl {
 public:
  Impl(Config config, std::string config_path) : config_(std::move(config)), config_path_(std::move(config_path)) {}

  ~Impl() {
    // Teardown order matters: nothing that the store's thread may still call
    // back into (through loop_->Post) is destroyed before the store.
    http_.reset();
    link_.reset();
    outbox_.reset();
  }

  Status Init() {
    started_mono_ms_ = SystemClock().MonotonicMillis();
    WS_ASSIGN_OR_RETURN(loop_, EventLoop::Create());
    WS_ASSIGN_OR_RETURN(signals_, SignalWatcher::Create(loop_.get(), {[this] { BeginStop(); }, [this] { Reload(); }}));
    WS_ASSIGN_OR_RETURN(random_, RandomSource::Create());
    WS_ASSIGN_OR_RETURN(boot_id_, random_->HexToken(8));

    std::string store_dir = DirName(config_.storage.path);
    WS_TRY(MakeDirectories(store_dir).WithContext("storage.path"));
    SqliteOutboxOptions so;
    so.path = config_.storage.path;
    so.max_bytes = config_.storage.max_bytes;
    so.control_reserve_bytes = config_.storage.control_reserve_bytes;
    so.classes = config_.storage.classes;
    so.retain_delivered_s = config_.storage.retain_delivered_s;
    so.commit_window_us = config_.storage.commit_window_us;
    so.intake_log = config_.storage.intake_log;
    so.wal_checkpoint_bytes = static_cast<int64_t>(WalCheckpointBytes(config_.storage));
    int64_t t0 = SystemClock().MonotonicMillis();
    WS_ASSIGN_OR_RETURN(outbox_, SqliteOutbox::Open(so));
    OutboxStats st = outbox_->Stats();
    uint64_t backlog = 0;
    for (const ClassBacklog& b : st.backlog) backlog += b.count;
    WS_LOG_INFO("node", "store open",
                {{"path", config_.storage.path},
                 {"backlog", std::to_string(backlog)},
                 {"last_sequence", std::to_string(st.last_sequence)},
                 {"open_ms", std::to_string(SystemClock().MonotonicMillis() - t0)}});
    if (st.quarantined_at_start) {
      WS_LOG_ERROR("node", "ALARM: the store was damaged, moved aside, and a fresh store started",
                   {{"path", config_.storage.path}});
    }

    std::string prefix = ExpandTopicPrefix(config_);
    router_ = std::make_unique<Router>(config_.routes, prefix, config_.node.site, config_.node.id);

    BackboneOptions bo;
    bo.endpoints = config_.backbone.endpoints;
    bo.protocol = config_.backbone.protocol;
    bo.client_id = config_.backbone.client_id.empty() ? "waystation-" + config_.node.id : config_.backbone.client_id;
    bo.topic_prefix = prefix;
    bo.keepalive_s = config_.backbone.keepalive_s;
    bo.inflight_window = config_.backbone.inflight_window;
    bo.node_id = config_.node.id;
    bo.reconnect_min_ms = config_.backbone.reconnect_min_ms;
    bo.reconnect_max_ms = config_.backbone.reconnect_max_ms;
    bo.return_to_primary_ms = config_.backbone.return_to_primary_s * 1000;
    bo.ack_timeout_ms = config_.backbone.ack_timeout_s * 1000;
    bo.max_bytes_per_s = config_.backbone.max_bytes_per_s;
    bo.version = WS_VERSION;
    bo.boot_id = boot_id_;
    WS_ASSIGN_OR_RETURN(link_, BackboneLink::Create(loop_.get(), outbox_.get(), std::move(bo)));
    EventLoop* loop = loop_.get();
    BackboneLink* link = link_.get();
    // Runs on the store's thread. It touches only the loop, which outlives
    // the store; the link is reached on the loop thread, where it is alive
    // for as long as the loop runs.
    outbox_->SetAppendListener([loop, link] { loop->Post([link] { link->NotifyAppended(); }); });

    LocalApiContext ctx;
    ctx.loop = loop_.get();
    ctx.clock = &SystemClock();
    ctx.outbox = outbox_.get();
    ctx.router = router_.get();
    ctx.random = random_.get();
    ctx.api = &config_.api;
    ctx.ready = [this] { return !stopping_; };
    ctx.status_json = [this] { return StatusJson(); };
    ctx.metrics_text = [this] { return MetricsBody(); };
    api_ = std::make_unique<LocalApi>(std::move(ctx));

    for (const std::string& l : config_.api.listen) {
      if (l.rfind("unix:", 0) == 0) WS_TRY(MakeDirectories(DirName(l.substr(5))).WithContext("api.listen"));
    }
    HttpServerOptions ho;
    ho.listen = config_.api.listen;
    WS_TRY(api_->ConfigureTls(&ho));
    ho.max_connections = config_.api.max_connections;
    // The body limit leaves room for a batch; per-event limits are the API's.
    // max_event_bytes is validated to <= 16 MiB, so the product fits size_t on 32-bit targets.
    ho.max_body_bytes = std::max<size_t>(static_cast<size_t>(config_.api.max_event_bytes) * 4, 1024 * 1024);
    LocalApi* api = api_.get();
    WS_ASSIGN_OR_RETURN(http_, HttpServer::Create(loop_.get(), std::move(ho), [api](HttpRequest&& req, HttpResponder r) {
                          api->Handle(std::move(req), std::move(r));
                        }));
    std::string bound;
    for (const std::string& a : http_->BoundAddresses()) bound += (bound.empty() ? "" : " ") + a;
    WS_LOG_INFO("node", "local API listening", {{"addresses", bound}});
    return Status::Ok();
  }

  Status Run() {
    link_->Start();
    ScheduleHeapTrim();
    WS_LOG_INFO("node", "running",
                {{"node", config_.node.id}, {"site", config_.node.site}, {"version", WS_VERSION}, {"boot_id", boot_id_}});
    Status s = loop_->Run();
    WS_LOG_INFO("node", "stopped");
    return s;
  }

 private:
  void ScheduleHeapTrim() {
    loop_->AddTimer(kHeapTrimIntervalMs, [this] {
      ReleaseFreeHeap();
      if (!stopping_) ScheduleHeapTrim();
    });
  }

  void BeginStop() {
    if (stopping_) return;
    stopping_ = true;
    WS_LOG_INFO("node", "stopping: closing the local API, publishing offline state");
    http_->Close();
    EventLoop* loop = loop_.get();
    loop->AddTimer(kStopGraceMs, [loop] {
      WS_LOG_WARN("node", "backbone link did not stop in time; stopping anyway");
      loop->Stop();
    });
    link_->Stop([loop] { loop->Stop(); });
  }

  void Reload() {
    api_->ReloadTls();
    Config fresh;
    std::vector<std::string> errors;
    if (!LoadConfigFile(config_path_, &fresh, &errors)) {
      for (const std::string& e : errors) WS_LOG_ERROR("config", "reload refused: " + e);
      return;
    }
    ApplyLogConfig(fresh.log);
    std::string restart;
    if (!(fresh.node == config_.node)) restart += " node";
    if (!(fresh.storage == config_.storage)) restart += " storage";
    if (!(fresh.api == config_.api)) restart += " api";
    if (!(fresh.backbone == config_.backbone)) restart += " backbone";
    if (!(fresh.routes == config_.routes)) restart += " routes";
    config_.log = fresh.log;
    if (restart.empty()) {
      WS_LOG_INFO("config", "reloaded", {{"path", config_path_}});
    } else {
      WS_LOG_WARN("config", "reloaded the log settings; these sections change only with a restart:" + restart);
    }
  }

  std::string StatusJson() const {
    OutboxStats st = outbox_->Stats();
    BackboneStats ls = link_->Stats();
    int64_t now_us = SystemClock().WallMicros();
    JsonWriter w;
    w.String("version", WS_VERSION).String("commit", WS_GIT_COMMIT).String("arch", WS_TARGET_ARCH);
    w.BeginObject("node").String("id", config_.node.id).String("site", config_.node.site).String("boot_id", boot_id_).End();
    w.Int("uptime_s", (SystemClock().MonotonicMillis() - started_mono_ms_) / 1000);
    w.BeginObject("backbone")
        .String("state", LinkStateName(ls.state))
        .String("endpoint", ls.endpoint)
        .Bool("on_primary", ls.endpoint_index == 0)
        .Int("connects", static_cast<int64_t>(ls.connects))
        .Int("failovers", static_cast<int64_t>(ls.failovers))
        .Int("ack_timeouts", static_cast<int64_t>(ls.ack_timeouts))
        .Int("connect_failures", static_cast<int64_t>(ls.connect_failures))
        .Int("disconnects", static_cast<int64_t>(ls.disconnects))
        .Int("inflight", ls.inflight)
        .Int("window", ls.window)
        .Int("publish_limit", ls.publish_limit)
        .Int("shortest_round_trip_us", ls.shortest_round_trip_us);
    if (!ls.last_error.empty()) {
      char at[48];
      FormatRfc3339(ls.last_error_us, at);
      w.BeginObject("last_error").String("message", ls.last_error).String("at", at).End();
    }
    w.End();
    w.BeginObject("backlog");
    for (Priority p : kAllPriorities) {
      const ClassBacklog& b = st.backlog[static_cast<int>(p)];
      int64_t age = b.count > 0 && b.oldest_accepted_us > 0 ? (now_us - b.oldest_accepted_us) / 1'000'000 : 0;
      w.BeginObject(PriorityName(p))
          .Int("count", static_cast<int64_t>(b.count))
          .Int("bytes", static_cast<int64_t>(b.bytes))
          .Int("oldest_age_s", age)
          .End();
    }
    w.End();
    w.BeginObject("dlq").Int("count", static_cast<int64_t>(st.dlq_count)).End();
    w.Int("last_sequence", st.last_sequence);
    w.BeginArray("alarms");
    if (st.quarantined_at_start || st.quarantined_while_running) w.String("", "store_quarantined");
    if (st.integrity_failed) w.String("", "store_integrity_failed");
    if (st.clock_shift_pending) w.String("", "store_clock_shift_pending");
    if (api_->tls_reload_failed()) w.String("", "api_tls_reload_failed");
    if (ls.session_flapping) w.String("", "backbone_session_flapping");
    w.End();
    return w.Finish();
  }

  std::string MetricsBody() const {
    OutboxStats st = outbox_->Stats();
    BackboneStats ls = link_->Stats();
    HttpServerStats hs = http_->Stats();
    int64_t now_us = SystemClock().WallMicros();
    MetricsText m;
    m.Family("waystation_backlog_events", "gauge", "Events in the outbox by priority class.");
    for (Priority p : kAllPriorities) m.Sample(LabelFor(p), st.backlog[static_cast<int>(p)].count);
    m.Family("waystation_backlog_bytes", "gauge", "Bytes of events in the outbox by priority class.");
    for (Priority p : kAllPriorities) m.Sample(LabelFor(p), st.backlog[static_cast<int>(p)].bytes);
    m.Family("waystation_backlog_oldest_age_seconds", "gauge", "Age of the oldest undelivered event by class.");
    for (Priority p : kAllPriorities) {
      const ClassBacklog& b = st.backlog[static_cast<int>(p)];
      double age = b.count > 0 && b.oldest_accepted_us > 0 ? static_cast<double>(now_us - b.oldest_accepted_us) / 1e6 : 0;
      m.Sample(LabelFor(p), age);
    }
    m.Family("waystation_dlq_events", "gauge", "Events in the dead-letter queue.").Sample("", st.dlq_count);
    m.Family("waystation_store_commits_total", "counter", "Append transactions committed.").Sample("", st.commits);
    m.Family("waystation_store_appended_events_total", "counter", "Events committed to the outbox.")
        .Sample("", st.appended_events);
    m.Family("waystation_store_removed_events_total", "counter", "Events removed from the outbox by reason.")
        .Sample("reason=\"delivered\"", st.removed_delivered)
        .Sample("reason=\"expired\"", st.removed_expired)
        .Sample("reason=\"dropped_overflow\"", st.removed_dropped_overflow)
        .Sample("reason=\"dead_lettered\"", st.removed_dead_lettered)
        .Sample("reason=\"purged\"", st.removed_purged);
    m.Family("waystation_store_rejected_full_total", "counter", "Appends refused because the store was full.")
        .Sample("", st.rejected_full);
    m.Family("waystation_store_nacked_total", "counter", "Events put back for a later retry after a transient failure.")
        .Sample("", st.nacked);
    m.Family("waystation_store_replayed_total", "counter", "Delivered events queued again by replay.")
        .Sample("", st.replayed);
    m.Family("waystation_store_checkpoints_total", "counter",
             "WAL checkpoints that copied frames into the database file, by the thread that ran them.")
        .Sample("by=\"background\"", st.checkpoints_background)
        .Sample("by=\"committer\"", st.checkpoints_committer);
    m.Family("waystation_store_compactions_total", "counter",
             "Rewrites of the store file without its free pages after a backlog drained.")
        .Sample("", st.compactions);
    m.Family("waystation_store_compacted_bytes_total", "counter", "Free bytes the compactions gave back to the disk.")
        .Sample("", st.compacted_bytes);
    m.Family("waystation_dlq_retried_total", "counter", "Dead letters queued again by an operator.")
        .Sample("", st.dead_letters_retried);
    m.Family("waystation_store_clock_steps_total", "counter",
             "Changes of the wall clock (and times found stamped before it was set) carried into the stored times.")
        .Sample("", st.clock_steps);
    m.Family("waystation_store_clock_shift_pending", "gauge",
             "1 while stored times could not yet follow a change of the wall clock (nothing expires meanwhile).")
        .Sample("", uint64_t{st.clock_shift_pending ? 1u : 0u});
    m.Family("waystation_store_quarantined", "gauge",
             "1 if a damaged store was moved aside (at start, or when the background check found damage).")
        .Sample("", uint64_t{st.quarantined_at_start || st.quarantined_while_running ? 1u : 0u});
    m.Family("waystation_store_integrity_failed", "gauge",
             "1 if the background integrity check found damage that is still in use (the store is quarantined "
             "as soon as it can be, at the latest at the next start).")
        .Sample("", uint64_t{st.integrity_failed ? 1u : 0u});
    m.Family("waystation_backbone_connected", "gauge", "1 while connected to a backbone broker.")
        .Sample("", uint64_t{ls.state == LinkState::kConnected ? 1u : 0u});
    m.Family("waystation_backbone_on_primary", "gauge",
             "1 while the link's current (or last) endpoint is the first one configured, the primary.")
        .Sample("", uint64_t{ls.endpoint_index == 0 ? 1u : 0u});
    m.Family("waystation_backbone_connects_total", "counter", "Successful connects.").Sample("", ls.connects);
    m.Family("waystation_backbone_failovers_total", "counter", "Moves to another endpoint.").Sample("", ls.failovers);
    m.Family("waystation_backbone_connect_failures_total", "counter",
             "Connect attempts that never reached a successful CONNACK (refused, unreachable, TLS, timeout).")
        .Sample("", ls.connect_failures);
    m.Family("waystation_backbone_disconnects_total", "counter", "Sessions that ended, planned or not.")
        .Sample("", ls.disconnects);
    m.Family("waystation_backbone_short_sessions_total", "counter",
             "Sessions lost within a minute of their CONNACK.")
        .Sample("", ls.short_sessions);
    m.Family("waystation_backbone_session_flapping", "gauge",
             "1 while three or more sessions were lost within a minute of connecting in the last ten minutes.")
        .Sample("", uint64_t{ls.session_flapping ? 1u : 0u});
    m.Family("waystation_backbone_rate_limit_pauses_total", "counter",
             "Times event publishing waited for backbone.max_bytes_per_s.")
        .Sample("", ls.rate_limit_pauses);
    m.Family("waystation_backbone_ack_timeouts_total", "counter",
             "Sessions ended because no PUBACK came within backbone.ack_timeout_s.")
        .Sample("", ls.ack_timeouts);
    m.Family("waystation_backbone_published_total", "counter", "QoS 1 publishes sent.").Sample("", ls.published);
    m.Family("waystation_backbone_acked_total", "counter", "Publishes acknowledged by the broker.").Sample("", ls.acked);
    m.Family("waystation_backbone_inflight", "gauge", "Publishes awaiting acknowledgement.")
        .Sample("", uint64_t{ls.inflight});
    m.Family("waystation_backbone_publish_limit", "gauge",
             "Publishes that may await acknowledgement at once, following the measured round trips; 0 while "
             "disconnected.")
        .Sample("", uint64_t{ls.publish_limit});
    m.Family("waystation_backbone_shortest_round_trip_seconds", "gauge",
             "Shortest PUBLISH to PUBACK round trip of the current session; 0 while disconnected.")
        .Sample("", static_cast<double>(ls.shortest_round_trip_us) / 1e6);
    m.Family("waystation_http_requests_total", "counter", "Requests to the local API.").Sample("", hs.requests);
    m.Family("waystation_http_connections_open", "gauge", "Open local API connections.").Sample("", hs.connections_open);
    m.Family("waystation_api_events_accepted_total", "counter", "Events acknowledged with 202.")
        .Sample("", api_->stats().events_accepted.load());
    m.Family("waystation_api_requests_rejected_total", "counter", "Requests answered with an error.")
        .Sample("", api_->stats().requests_rejected.load());
    Result<ProcessStats> ps = ReadProcessStats();
    if (ps.ok()) {
      m.Family("waystation_process_resident_memory_bytes", "gauge", "Resident set size.").Sample("", ps->rss_bytes);
      m.Family("waystation_process_write_bytes_total", "counter", "Bytes this process caused to be written to storage.")
          .Sample("", ps->write_bytes);
      uint64_t appended = st.appended_events;
      m.Family("waystation_store_write_bytes_per_event", "gauge", "Storage bytes written per committed event.")
          .Sample("", appended > 0 ? static_cast<double>(ps->write_bytes) / static_cast<double>(appended) : 0.0);
    }
    return m.text() + AckLatencyHistogram(st);
  }

  Config config_;
  std::string config_path_;
  std::string boot_id_;
  int64_t started_mono_ms_ = 0;
  bool stopping_ = false;

  // Declaration order is construction order; ~Impl() resets the parts that
  // must go first.
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<SignalWatcher> signals_;
  std::unique_ptr<RandomSource> random_;
  std::unique_ptr<SqliteOutbox> outbox_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<BackboneLink> link_;
  std::unique_ptr<LocalApi> api_;
  std::unique_ptr<HttpServer> http_;
};

Result<std::unique_ptr<Node>> Node::Create(Config config, std::string config_path) {
  auto impl = std::make_unique<Impl>(std::move(config), std::move(config_path));
  WS_TRY(impl->Init());
  return std::unique_ptr<Node>(new Node(std::move(impl)));
}

Node::Node(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Node::~Node() = default;

Status Node::Run() { return impl_->Run(); }

}  // namespace ws
