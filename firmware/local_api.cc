#include "firmware/local_api.h"

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "adapters/json/json_codec.h"
#include "core/priority.h"
#include "firmware/cloudevents_http.h"
#include "firmware/metrics_text.h"
#include "platform/log.h"

namespace ws {
namespace {

constexpr size_t kMaxBatchEvents = 1000;

// Parsed events waiting for their commit, at most (a request that would go
// over waits unparsed). Bounds the daemon's memory under a flood of batches:
// 64 connections posting batches of 100 had 6,400 events in the store's
// queue and the daemon peaked at 16.2-16.4 MiB; with this bound 13.0-13.2
// MiB at about the same rate (4,096 gave 14.6 MiB). The store's batches
// hold at most half of this (SqliteOutboxOptions::max_batch_events), so
// one commits while the next gathers.
constexpr size_t kMaxEventsInFlight = 2048;
constexpr size_t kMaxIdempotencyKeyBytes = 255;
constexpr size_t kDefaultDlqPage = 100;
constexpr size_t kMaxDlqPage = 1000;
// Answers above this are not remembered for Idempotency-Key replays; a
// batch answer of 1000 ids stays well below it.
constexpr size_t kIdempotencyMaxBytes = size_t{32} * 1024 * 1024;

constexpr std::string_view kDlqPrefix = "/v1/dlq/";
constexpr std::string_view kRetrySuffix = ":retry";

enum class Route { kUnknown, kEvents, kBatch, kStatus, kMetrics, kDlq, kDlqItem, kDlqRetry };

// The route of `path`; for the dead-letter item routes, *item gets the raw
// (still percent-encoded) id segment.
Route RouteOf(const std::string& path, std::string_view* item) {
  if (path == "/v1/events") return Route::kEvents;
  if (path == "/v1/events:batch") return Route::kBatch;
  if (path == "/v1/status") return Route::kStatus;
  if (path == "/metrics") return Route::kMetrics;
  if (path == "/v1/dlq") return Route::kDlq;
  std::string_view p(path);
  if (p.size() > kDlqPrefix.size() && p.substr(0, kDlqPrefix.size()) == kDlqPrefix) {
    std::string_view rest = p.substr(kDlqPrefix.size());
    if (rest.find('/') != std::string_view::npos) return Route::kUnknown;
    if (rest.size() > kRetrySuffix.size() && rest.substr(rest.size() - kRetrySuffix.size()) == kRetrySuffix) {
      *item = rest.substr(0, rest.size() - kRetrySuffix.size());
      return Route::kDlqRetry;
    }
    *item = rest;
    return Route::kDlqItem;
  }
  return Route::kUnknown;
}

// The attribute a validation message starts with: "time: must be ..." ->
// "time"; a batch element's "[3]: time: ..." -> "[3].time".
std::string FieldOf(const std::string& message) {
  std::string_view m(message);
  std::string prefix;
  if (!m.empty() && m.front() == '[') {
    size_t close = m.find("]: ");
    if (close != std::string_view::npos) {
      prefix = std::string(m.substr(0, close + 1));
      m.remove_prefix(close + 3);
    }
  }
  size_t colon = m.find(':');
  if (colon == std::string_view::npos) return prefix;
  return prefix.empty() ? std::string(m.substr(0, colon)) : prefix + "." + std::string(m.substr(0, colon));
}

bool TypeAllowed(const TokenConfig& token, std::string_view type) {
  if (token.allow_types.empty()) return true;
  for (const std::string& glob : token.allow_types) {
    if (GlobMatch(glob, type)) return true;
  }
  return false;
}

HttpResponse JsonResponse(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  return r;
}

HttpResponse MethodNotAllowed(std::string_view allow) {
  HttpResponse r = Problem(405, "method-not-allowed", "Method not allowed", "use " + std::string(allow));
  r.headers.emplace_back("Allow", std::string(allow));
  return r;
}

bool IsGet(const HttpRequest& req) { return req.method == "GET" || req.method == "HEAD"; }

// What makes two POSTs "the same request" for Idempotency-Key: the method,
// the path and the body, and for binary mode also the headers that carry the
// event (Content-Type and every ce-*), in a canonical order.
std::string RequestFingerprint(const HttpRequest& req) {
  std::vector<const std::pair<std::string, std::string>*> ce;
  for (const auto& h : req.headers) {
    if (h.first.compare(0, 3, "ce-") == 0) ce.push_back(&h);
  }
  std::sort(ce.begin(), ce.end(), [](const auto* a, const auto* b) { return *a < *b; });
  std::string text;
  text.reserve(req.body.size() + 256);
  text += req.method;
  text += '\n';
  text += req.path;
  text += '\n';
  if (const std::string* ct = req.Header("content-type")) text += *ct;
  text += '\n';
  for (const auto* h : ce) {
    // Lengths first, so that no header can be forged from another's text.
    text += std::to_string(h->first.size()) + ':' + h->first + std::to_string(h->second.size()) + ':' + h->second;
  }
  text += '\n';
  text += req.body;
  return Sha256Hex(text);
}

// RFC 8941 allows the key as a quoted string ("abc"); bare tokens are
// accepted too. Printable ASCII only.
bool ValidIdempotencyKey(std::string_view* key) {
  if (key->size() >= 2 && key->front() == '"' && key->back() == '"') *key = key->substr(1, key->size() - 2);
  if (key->empty() || key->size() > kMaxIdempotencyKeyBytes) return false;
  for (char c : *key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

// Digits only, no sign; false on overflow past 18 digits.
bool ParseDecimal(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

std::string Rfc3339(int64_t wall_us) {
  if (wall_us <= 0) return {};
  char buf[48];
  FormatRfc3339(wall_us, buf);
  return buf;
}

// A structured, binary-mode or batch event the codec refused: 400 for
// malformed JSON and bad attributes, 422 for attributes that are each
// well-formed but contradict each other (data and data_base64).
HttpResponse InvalidEventProblem(const Status& st) {
  const std::string& m = st.message();
  if (st.code() == StatusCode::kFailedPrecondition) {
    return Problem(422, "conflicting-attributes", "Conflicting attributes", m, FieldOf(m));
  }
  return Problem(400, "invalid-event", "Invalid event", m, FieldOf(m));
}

// How a failed dead-letter operation reads to an API client. `what` starts
// the detail.
HttpResponse OutboxProblem(const Status& s, std::string_view what) {
  switch (s.code()) {
    case StatusCode::kNotFound:
      return Problem(404, "dead-letter-not-found", "Dead letter not found", s.message());
    case StatusCode::kUnimplemented:
      return Problem(501, "not-implemented", "Not implemented",
                     std::string(what) + " is not supported by this node's store: " + s.message());
    case StatusCode::kResourceExhausted:
      return Problem(507, "store-full", "Store full", s.message());
    case StatusCode::kAlreadyExists:
      return Problem(409, "id-conflict", "Event id conflict", s.message(), "id");
    case StatusCode::kInvalidArgument:
      return Problem(400, "invalid-request", "Invalid request", s.message());
    default: {
      WS_LOG_ERROR("api", std::string(what) + " failed", {{"error", s.ToString()}});
      HttpResponse r = Problem(503, "unavailable", "Service unavailable", std::string(what) + " failed; retry later");
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
  }
}

// "api.listen[1].tls" + "key_file: ..." -> "api.listen[1].tls.key_file: ...":
// the TLS adapter names the file's key, the configuration its place.
Status WithTlsKey(const Status& s, size_t listen_index) {
  return Status(s.code(), "api.listen[" + std::to_string(listen_index) + "].tls." + s.message());
}

TlsServerFiles TlsFilesOf(const ListenTlsConfig& tls) { return {tls.cert_file, tls.key_file, tls.client_ca_file}; }

// One line per certificate put into service, and a warning for one that
// clients will refuse on dates alone.
void LogCertificate(std::string_view message, const std::string& address, const TlsServer& server, int64_t now_us) {
  const TlsCertificateInfo& cert = server.certificate();
  WS_LOG_INFO("api", message,
              {{"listen", address},
               {"subject", cert.subject},
               {"serial", cert.serial},
               {"not_after", cert.not_after},
               {"client_certificates", server.requires_client_certificate() ? "required" : "not asked for"}});
  const int64_t now_s = now_us / 1'000'000;
  if (now_s >= cert.not_after_unix_s) {
    WS_LOG_WARN("api", "the TLS certificate has expired; clients will refuse it",
                {{"listen", address}, {"not_after", cert.not_after}});
  } else if (now_s < cert.not_before_unix_s) {
    WS_LOG_WARN("api", "the TLS certificate is not valid yet; clients will refuse it",
                {{"listen", address}, {"not_before", cert.not_before}});
  }
}

// A Prometheus label value: backslash and double quote escaped.
std::string ListenerLabel(const std::string& address) {
  std::string out = "listener=\"";
  for (char c : address) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  out += '"';
  return out;
}

// Outbox completions run on the store's thread; answers are written on the
// loop thread, and `then` runs there after the answer.
void AnswerOnLoop(EventLoop* loop, LocalApiStats* stats, HttpResponder respond, HttpResponse r,
                  std::function<void()> then = {}) {
  if (r.status >= 400) stats->requests_rejected.fetch_add(1, std::memory_order_relaxed);
  loop->Post([respond = std::move(respond), r = std::move(r), then = std::move(then)]() mutable {
    respond(std::move(r));
    if (then) then();
  });
}

}  // namespace

HttpResponse Problem(int status, std::string_view slug, std::string_view title, std::string_view detail,
                     std::string_view field) {
  JsonWriter w;
  w.String("type", std::string("https://waystation.dev/problems/") + std::string(slug))
      .String("title", title)
      .Int("status", status)
      .String("detail", detail);
  if (!field.empty()) w.String("field", field);
  HttpResponse r;
  r.status = status;
  r.content_type = "application/problem+json";
  r.body = w.Finish();
  return r;
}

LocalApi::LocalApi(LocalApiContext context) : ctx_(std::move(context)) {
  const ApiConfig& api = *ctx_.api;
  token_buckets_.reserve(api.tokens.size());
  for (const TokenConfig& t : api.tokens) token_buckets_.emplace_back(*ctx_.clock, t.rate_per_s, t.burst);
  if (api.anonymous_rate_per_s > 0)
    anonymous_bucket_.emplace(*ctx_.clock, api.anonymous_rate_per_s, api.anonymous_burst);
  IdempotencyOptions io;
  io.ttl_s = api.idempotency_ttl_s;
  io.max_keys = api.idempotency_max_keys;
  io.max_bytes = kIdempotencyMaxBytes;
  idempotency_ = std::make_shared<IdempotencyCache>(*ctx_.clock, io);
}

LocalApi::~LocalApi() = default;

bool CheckLocalApiTls(const ApiConfig& api, std::vector<std::string>* errors) {
  const size_t before = errors->size();
  for (size_t i = 0; i < api.listen.size(); ++i) {
    const ListenTlsConfig* tls = ListenTls(api, i);
    if (tls == nullptr || tls->cert_file.empty() || tls->key_file.empty()) continue;
    Status s = CheckTlsServerFiles(TlsFilesOf(*tls));
    if (!s.ok()) errors->push_back(WithTlsKey(s, i).message());
  }
  return errors->size() == before;
}

Status LocalApi::ConfigureTls(HttpServerOptions* options) {
  const ApiConfig& api = *ctx_.api;
  if (options->listen != api.listen) {
    return InvalidArgument("LocalApi: the server's listen addresses are not api.listen");
  }
  tls_listeners_.clear();
  options->transports.clear();
  for (size_t i = 0; i < api.listen.size(); ++i) {
    const ListenTlsConfig* tls = ListenTls(api, i);
    if (tls == nullptr) continue;
    Result<std::shared_ptr<TlsServer>> server = TlsServer::Create(TlsFilesOf(*tls));
    if (!server.ok()) return WithTlsKey(server.status(), i);
    options->transports.resize(i + 1);
    options->transports[i] = *server;
    LogCertificate("HTTPS listener", api.listen[i], **server, ctx_.clock->WallMicros());
    tls_listeners_.push_back(TlsListener{i, api.listen[i], std::move(server).value()});
  }
  return Status::Ok();
}

void LocalApi::ReloadTls() {
  for (const TlsListener& l : tls_listeners_) {
    Status s = l.server->Reload();
    if (s.ok()) {
      LogCertificate("TLS certificate reloaded", l.address, *l.server, ctx_.clock->WallMicros());
      continue;
    }
    const TlsCertificateInfo& kept = l.server->certificate();
    WS_LOG_ERROR("api", "ALARM: TLS certificate reload failed; new connections still get the previous certificate",
                 {{"listen", l.address}, {"error", WithTlsKey(s, l.index).message()}, {"serial_in_use", kept.serial}});
  }
}

bool LocalApi::tls_reload_failed() const {
  for (const TlsListener& l : tls_listeners_) {
    if (l.server->Stats().last_reload_failed) return true;
  }
  return false;
}

void LocalApi::AppendTlsMetrics(std::string* out) const {
  if (tls_listeners_.empty()) return;
  std::vector<TlsServerStats> stats;
  stats.reserve(tls_listeners_.size());
  for (const TlsListener& l : tls_listeners_) stats.push_back(l.server->Stats());
  MetricsText m;
  auto family = [&](std::string_view name, std::string_view type, std::string_view help, auto value) {
    m.Family(name, type, help);
    for (size_t i = 0; i < tls_listeners_.size(); ++i) m.Sample(ListenerLabel(tls_listeners_[i].address), value(i));
  };
  family("waystation_api_tls_handshakes_total", "counter", "TLS handshakes completed, by listener.",
         [&](size_t i) { return stats[i].handshakes; });
  family("waystation_api_tls_handshake_failures_total", "counter",
         "TLS handshakes that failed (refused client certificates included; timeouts not), by listener.",
         [&](size_t i) { return stats[i].handshake_failures; });
  family("waystation_api_tls_client_certificates_refused_total", "counter",
         "mTLS handshakes refused for a missing or untrusted client certificate, by listener.",
         [&](size_t i) { return stats[i].client_certificates_refused; });
  family("waystation_api_tls_reload_failures_total", "counter",
         "SIGHUP reloads of a listener's certificate files that failed and kept the previous ones.",
         [&](size_t i) { return stats[i].reload_failures; });
  family("waystation_api_tls_reload_failed", "gauge",
         "1 while the last reload of a listener's certificate files failed (the previous ones are in use).",
         [&](size_t i) { return uint64_t{stats[i].last_reload_failed ? 1u : 0u}; });
  family("waystation_api_tls_certificate_not_after_seconds", "gauge",
         "Expiry of the certificate a listener presents, as a Unix time.",
         [&](size_t i) { return tls_listeners_[i].server->certificate().not_after_unix_s; });
  *out += m.text();
}

void LocalApi::Reject(HttpResponder& respond, HttpResponse response) {
  stats_.requests_rejected.fetch_add(1, std::memory_order_relaxed);
  respond(std::move(response));
}

std::optional<LocalApi::Caller> LocalApi::Authenticate(const HttpRequest& req, HttpResponder& respond) {
  // Anonymous: only local listeners exist (checked at start).
  if (ctx_.api->tokens.empty()) return Caller{nullptr, anonymous_bucket_ ? &*anonymous_bucket_ : nullptr};
  const std::string* auth = req.Header("authorization");
  static constexpr std::string_view kBearer = "Bearer ";
  if (auth == nullptr || auth->size() <= kBearer.size() || auth->compare(0, kBearer.size(), kBearer) != 0) {
    HttpResponse r =
        Problem(401, "unauthorized", "Missing bearer token", "send Authorization: Bearer <token>", "authorization");
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    Reject(respond, std::move(r));
    return std::nullopt;
  }
  std::string hash = Sha256Hex(std::string_view(*auth).substr(kBearer.size()));
  std::optional<size_t> found;
  for (size_t i = 0; i < ctx_.api->tokens.size(); ++i) {
    // Compare with every token so the time taken does not reveal which matched.
    if (ConstantTimeEquals(hash, ctx_.api->tokens[i].sha256)) found = i;
  }
  if (!found) {
    HttpResponse r =
        Problem(401, "unauthorized", "Invalid bearer token", "the token is not known to this node", "authorization");
    r.headers.emplace_back("WWW-Authenticate", "Bearer error=\"invalid_token\"");
    Reject(respond, std::move(r));
    return std::nullopt;
  }
  TokenBucket* bucket = &token_buckets_[*found];
  return Caller{&ctx_.api->tokens[*found], bucket->unlimited() ? nullptr : bucket};
}

void LocalApi::Handle(HttpRequest&& req, HttpResponder respond) {
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  const std::string& path = req.path;
  // Probes stay open with tokens configured.
  if (path == "/v1/health") {
    if (!IsGet(req)) return Reject(respond, MethodNotAllowed("GET, HEAD"));
    return respond(JsonResponse(200, "{\"status\":\"ok\"}"));
  }
  if (path == "/v1/ready") {
    if (!IsGet(req)) return Reject(respond, MethodNotAllowed("GET, HEAD"));
    if (ctx_.ready && !ctx_.ready()) {
      HttpResponse r =
          Problem(503, "not-ready", "Not ready", "the node is starting or stopping; the store is not accepting events");
      r.headers.emplace_back("Retry-After", "1");
      return Reject(respond, std::move(r));
    }
    return respond(JsonResponse(200, "{\"status\":\"ready\"}"));
  }

  std::string_view item;
  const Route route = RouteOf(path, &item);
  if (route == Route::kUnknown) {
    return Reject(respond, Problem(404, "not-found", "Not found", "no such resource: " + path));
  }
  std::optional<Caller> caller = Authenticate(req, respond);
  if (!caller) return;

  switch (route) {
    case Route::kStatus:
    case Route::kMetrics: {
      if (!IsGet(req)) return Reject(respond, MethodNotAllowed("GET, HEAD"));
      if (route == Route::kStatus) return respond(JsonResponse(200, ctx_.status_json()));
      HttpResponse r;
      r.status = 200;
      r.content_type = "text/plain; version=0.0.4";
      r.body = ctx_.metrics_text();
      // The API's own policy counters follow the node's families.
      MetricsText m;
      m.Family("waystation_api_rate_limited_total", "counter", "Requests refused with 429 by a rate limit.")
          .Sample("", stats_.rate_limited.load(std::memory_order_relaxed));
      m.Family("waystation_api_idempotent_replays_total", "counter",
               "Requests answered with the remembered answer of their Idempotency-Key.")
          .Sample("", stats_.idempotent_replays.load(std::memory_order_relaxed));
      m.Family("waystation_api_idempotency_keys", "gauge", "Idempotency-Keys remembered now.")
          .Sample("", static_cast<uint64_t>(idempotency_->size()));
      m.Family("waystation_api_events_awaiting_commit", "gauge", "Events handed to the store and not answered yet.")
          .Sample("", static_cast<uint64_t>(events_in_flight_));
      m.Family("waystation_api_requests_waiting", "gauge",
               "POSTs waiting, unparsed, for fewer events to await their commit.")
          .Sample("", static_cast<uint64_t>(parked_.size()));
      r.body += m.text();
      AppendTlsMetrics(&r.body);
      return respond(std::move(r));
    }
    case Route::kDlq:
    case Route::kDlqItem:
    case Route::kDlqRetry: {
      std::string_view allow = route == Route::kDlq       ? "GET, HEAD, DELETE"
                               : route == Route::kDlqItem ? "DELETE"
                                                          : "POST";
      bool method_ok = route == Route::kDlq       ? (IsGet(req) || req.method == "DELETE")
                       : route == Route::kDlqItem ? req.method == "DELETE"
                                                  : req.method == "POST";
      if (!method_ok) return Reject(respond, MethodNotAllowed(allow));
      // Dead letters are the operator's business, not a producer's.
      if (caller->token != nullptr && !caller->token->admin) {
        return Reject(respond, Problem(403, "admin-required", "Operator token required",
                                       "token \"" + caller->token->name +
                                           "\" may not manage dead letters (set \"admin\": true on an operator token)",
                                       "authorization"));
      }
      if (route == Route::kDlq && IsGet(req)) return ListDeadLetters(req, std::move(respond));
      if (ctx_.ready && !ctx_.ready()) {
        HttpResponse r = Problem(503, "not-ready", "Not ready", "the node is stopping");
        r.headers.emplace_back("Retry-After", "1");
        return Reject(respond, std::move(r));
      }
      if (route == Route::kDlq) return PurgeDeadLetters(std::string(), std::move(respond));
      Result<std::string> id = PercentDecode(item, "id");
      if (!id.ok() || id->empty()) {
        return Reject(respond, Problem(404, "not-found", "Not found", "no such resource: " + path));
      }
      if (route == Route::kDlqRetry) return RetryDeadLetter(std::move(id).value(), std::move(respond));
      return PurgeDeadLetters(std::move(id).value(), std::move(respond));
    }
    case Route::kEvents:
    case Route::kBatch:
      break;
    case Route::kUnknown:
      return;
  }

  if (req.method != "POST") return Reject(respond, MethodNotAllowed("POST"));
  if (ctx_.ready && !ctx_.ready()) {
    HttpResponse r = Problem(503, "not-ready", "Not ready", "the node is stopping; send the event again later");
    r.headers.emplace_back("Retry-After", "1");
    return Reject(respond, std::move(r));
  }
  // The limit is checked before any body is parsed, so a flood costs little.
  if (caller->bucket != nullptr) {
    TokenBucket::Decision d = caller->bucket->TryAcquire();
    if (!d.allowed) {
      stats_.rate_limited.fetch_add(1, std::memory_order_relaxed);
      std::string who = caller->token != nullptr ? "token \"" + caller->token->name + "\"" : "anonymous producers";
      char rate[64];
      std::snprintf(rate, sizeof rate, "%g events/s (burst %g)", caller->bucket->rate_per_s(), caller->bucket->burst());
      HttpResponse r = Problem(429, "rate-limited", "Too many requests",
                               who + " may send " + rate + "; retry in " + std::to_string(d.retry_after_s) + " s");
      r.headers.emplace_back("Retry-After", std::to_string(d.retry_after_s));
      return Reject(respond, std::move(r));
    }
  }
  if (!ClaimIdempotencyKey(req, *caller, &respond)) return;
  // In arrival order: while any request waits, a new one waits behind it.
  if (events_in_flight_ >= kMaxEventsInFlight || !parked_.empty()) {
    parked_.push_back(Parked{std::move(req), std::move(respond), *caller, route == Route::kBatch});
    return;
  }
  if (route == Route::kBatch) return PostBatch(std::move(req), std::move(respond), *caller);
  PostEvent(std::move(req), std::move(respond), *caller);
}

void LocalApi::Answered(size_t events) {
  events_in_flight_ -= std::min(events_in_flight_, events);
  while (!parked_.empty() && events_in_flight_ < kMaxEventsInFlight) {
    Parked p = std::move(parked_.front());
    parked_.pop_front();
    if (p.batch) {
      PostBatch(std::move(p.request), std::move(p.respond), p.caller);
    } else {
      PostEvent(std::move(p.request), std::move(p.respond), p.caller);
    }
  }
}

bool LocalApi::ClaimIdempotencyKey(const HttpRequest& req, const Caller& caller, HttpResponder* respond) {
  const std::string* header = req.Header("idempotency-key");
  if (header == nullptr) return true;
  std::string_view key(*header);
  if (!ValidIdempotencyKey(&key)) {
    Reject(*respond,
           Problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key",
                   "the key must be 1-" + std::to_string(kMaxIdempotencyKeyBytes) + " printable ASCII characters",
                   "idempotency-key"));
    return false;
  }
  std::string scope = caller.token != nullptr ? caller.token->name : "anonymous";
  IdempotencyCache::Claim claim = idempotency_->Begin(scope, key, RequestFingerprint(req));
  switch (claim.outcome) {
    case IdempotencyCache::Outcome::kReplay: {
      stats_.idempotent_replays.fetch_add(1, std::memory_order_relaxed);
      HttpResponse r;
      r.status = claim.answer.status;
      r.content_type = std::move(claim.answer.content_type);
      r.body = std::move(claim.answer.body);
      r.headers.emplace_back("Idempotent-Replayed", "true");
      (*respond)(std::move(r));
      return false;
    }
    case IdempotencyCache::Outcome::kInFlight: {
      HttpResponse r = Problem(409, "idempotency-key-in-flight", "Request with this key in progress",
                               "the first request with this Idempotency-Key has not been answered yet; retry later",
                               "idempotency-key");
      r.headers.emplace_back("Retry-After", "1");
      Reject(*respond, std::move(r));
      return false;
    }
    case IdempotencyCache::Outcome::kReused:
      Reject(*respond, Problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                               "this Idempotency-Key was used for a different request; use a new key for a new request",
                               "idempotency-key"));
      return false;
    case IdempotencyCache::Outcome::kStarted:
      break;
  }
  // Runs on the loop thread (answers are always written there), like the
  // cache itself; the weak pointer lets a late answer outlive the API.
  *respond = [cache = std::weak_ptr<IdempotencyCache>(idempotency_), scope = std::move(scope), key = std::string(key),
              ticket = claim.ticket, inner = std::move(*respond)](HttpResponse r) {
    if (std::shared_ptr<IdempotencyCache> c = cache.lock()) {
      // Only successes are remembered: an error may be retried with the same key.
      if (r.status >= 200 && r.status < 300) {
        c->Finish(scope, key, ticket, RememberedAnswer{r.status, r.content_type, r.body});
      } else {
        c->Abandon(scope, key, ticket);
      }
    }
    inner(std::move(r));
  };
  return true;
}

void LocalApi::PostEvent(HttpRequest&& req, HttpResponder respond, const Caller& caller) {
  std::string_view media = MediaTypeOf(req.Header("content-type"));
  bool structured = media == "application/cloudevents+json";
  bool binary = !structured && req.Header("ce-specversion") != nullptr;
  if (!structured && !binary) {
    return Reject(respond, Problem(415, "unsupported-media-type", "Unsupported media type",
                                   "send application/cloudevents+json, or ce-* headers with any body (binary mode)",
                                   "content-type"));
  }
  if (req.body.size() > ctx_.api->max_event_bytes) {
    return Reject(respond, Problem(413, "event-too-large", "Event too large",
                                   "events are limited to " + std::to_string(ctx_.api->max_event_bytes) + " bytes"));
  }
  Result<Event> parsed = structured ? ParseStructuredEvent(req.body, /*allow_missing_id=*/true)
                                    : ParseBinaryModeEvent(req, /*allow_missing_id=*/true);
  if (!parsed.ok()) return Reject(respond, InvalidEventProblem(parsed.status()));
  if (caller.token != nullptr) {
    if (!TypeAllowed(*caller.token, parsed->type)) {
      return Reject(respond, Problem(403, "type-not-allowed", "Event type not allowed",
                                     "token \"" + caller.token->name + "\" may not publish " + parsed->type, "type"));
    }
    parsed->SetAttribute("producer", caller.token->name);
  }
  std::vector<Event> events;
  events.push_back(std::move(parsed).value());
  Append(std::move(events), /*batch=*/false, std::move(respond));
}

void LocalApi::PostBatch(HttpRequest&& req, HttpResponder respond, const Caller& caller) {
  std::string_view media = MediaTypeOf(req.Header("content-type"));
  if (media != "application/cloudevents-batch+json") {
    return Reject(respond, Problem(415, "unsupported-media-type", "Unsupported media type",
                                   "send application/cloudevents-batch+json", "content-type"));
  }
  Result<std::vector<Event>> parsed = ParseEventBatch(req.body, /*allow_missing_id=*/true, kMaxBatchEvents);
  if (!parsed.ok()) {
    Status st = parsed.status();
    if (st.code() == StatusCode::kResourceExhausted) {
      return Reject(respond, Problem(413, "batch-too-large", "Batch too large", st.message()));
    }
    return Reject(respond, InvalidEventProblem(st));
  }
  {
    // Two events of one batch with the same id: the store would keep only
    // the first (or refuse the batch as a conflict). Each event in a batch
    // is meant to be its own, so this is the producer's mistake to fix.
    std::unordered_map<std::string_view, size_t> first_with_id;
    first_with_id.reserve(parsed->size());
    for (size_t i = 0; i < parsed->size(); ++i) {
      const std::string& id = (*parsed)[i].id;
      if (id.empty()) continue;  // generated below, unique
      auto [it, inserted] = first_with_id.emplace(id, i);
      if (inserted) continue;
      const std::string field = "[" + std::to_string(i) + "].id";
      return Reject(respond, Problem(422, "duplicate-id-in-batch", "Duplicate event id in batch",
                                     field + ": \"" + id + "\" is also the id of [" + std::to_string(it->second) +
                                         "]; the events of a batch need distinct ids",
                                     field));
    }
  }
  // The request was admitted on one token; the rest of the batch is owed.
  if (caller.bucket != nullptr) caller.bucket->Charge(static_cast<double>(parsed->size() - 1));
  for (size_t i = 0; i < parsed->size(); ++i) {
    if ((*parsed)[i].ApproximateBytes() > ctx_.api->max_event_bytes) {
      return Reject(respond, Problem(413, "event-too-large", "Event too large",
                                     "[" + std::to_string(i) + "] exceeds " +
                                         std::to_string(ctx_.api->max_event_bytes) + " bytes",
                                     "[" + std::to_string(i) + "]"));
    }
    if (caller.token != nullptr) {
      if (!TypeAllowed(*caller.token, (*parsed)[i].type)) {
        return Reject(respond, Problem(403, "type-not-allowed", "Event type not allowed",
                                       "[" + std::to_string(i) + "]: token \"" + caller.token->name +
                                           "\" may not publish " + (*parsed)[i].type,
                                       "[" + std::to_string(i) + "].type"));
      }
      (*parsed)[i].SetAttribute("producer", caller.token->name);
    }
  }
  Append(std::move(parsed).value(), /*batch=*/true, std::move(respond));
}

void LocalApi::Append(std::vector<Event> events, bool batch, HttpResponder respond) {
  std::vector<OutboxEntry> entries;
  entries.reserve(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    Event& e = events[i];
    if (e.id.empty()) {
      // Time-ordered: the store's index of ids then grows at one end. With
      // random ids every append and every delivery changes a different
      // page of that index (see docs/benchmarks.md, "Event ids").
      Result<std::string> id = ctx_.random->UuidV7(ctx_.clock->WallMicros() / 1000);
      if (!id.ok()) {
        WS_LOG_ERROR("api", "cannot generate an event id", {{"error", id.status().ToString()}});
        return Reject(respond, Problem(503, "unavailable", "Service unavailable", "cannot generate an event id"));
      }
      e.id = std::move(id).value();
    }
    RouteDecision route = ctx_.router->Route(e);
    if (!IsValidPublishTopic(route.topic)) {
      std::string where;
      if (batch) {
        where += '[';
        where += std::to_string(i);
        where += "].";
      }
      return Reject(respond, Problem(400, "invalid-event", "Invalid event",
                                     where + "type: gives the topic \"" + route.topic +
                                         "\", which MQTT does not allow ('+', '#' or an empty level)",
                                     where + "type"));
    }
    OutboxEntry entry;
    entry.topic = std::move(route.topic);
    entry.stream = std::move(route.stream);
    entry.priority = route.priority;
    entry.ttl_us = route.ttl_s > 0 ? route.ttl_s * 1'000'000 : 0;
    entry.record = EncodeEventRecord(e);
    entry.event.id = std::move(e.id);
    entries.push_back(std::move(entry));
  }
  size_t n = entries.size();
  EventLoop* loop = ctx_.loop;
  LocalApiStats* stats = &stats_;
  LocalApi* api = this;  // lives until the loop has stopped running
  events_in_flight_ += n;
  ctx_.outbox->Append(std::move(entries), [loop, stats, api, batch, n, respond = std::move(respond)](
                                              Result<std::vector<AppendOutcome>> result) mutable {
    // On the store's thread: build the answer here, write it on the loop.
    HttpResponse r;
    if (result.ok()) {
      JsonWriter w;
      if (batch) {
        w.BeginArray("events");
        for (const AppendOutcome& o : *result) {
          w.BeginObject("").String("id", o.id).Int("sequence", o.sequence).End();
        }
        w.End();
      } else {
        const AppendOutcome& o = result->front();
        w.String("id", o.id).Int("sequence", o.sequence);
        if (o.duplicate) w.Bool("duplicate", true);
      }
      r = JsonResponse(202, w.Finish());
      stats->events_accepted.fetch_add(n, std::memory_order_relaxed);
    } else {
      const Status& s = result.status();
      switch (s.code()) {
        case StatusCode::kResourceExhausted:
          r = Problem(507, "store-full", "Store full", s.message());
          break;
        case StatusCode::kAlreadyExists:
          r = Problem(409, "id-conflict", "Event id conflict", s.message(), "id");
          break;
        default:
          WS_LOG_ERROR("api", "append failed", {{"error", s.ToString()}});
          r = Problem(503, "unavailable", "Service unavailable", "the store could not commit the event");
          r.headers.emplace_back("Retry-After", "1");
          break;
      }
    }
    AnswerOnLoop(loop, stats, std::move(respond), std::move(r), [api, n] { api->Answered(n); });
  });
}

void LocalApi::ListDeadLetters(const HttpRequest& req, HttpResponder respond) {
  int64_t after = 0;
  size_t limit = kDefaultDlqPage;
  bool seen_after = false, seen_limit = false;
  std::string_view q(req.query);
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string_view name = pair.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    int64_t v = 0;
    if (name == "after" && !seen_after) {
      seen_after = true;
      if (!ParseDecimal(value, &v)) {
        return Reject(respond, Problem(400, "invalid-query", "Invalid query parameter",
                                       "after: must be a sequence number (0 or more)", "after"));
      }
      after = v;
    } else if (name == "limit" && !seen_limit) {
      seen_limit = true;
      if (!ParseDecimal(value, &v) || v < 1 || v > static_cast<int64_t>(kMaxDlqPage)) {
        return Reject(respond, Problem(400, "invalid-query", "Invalid query parameter",
                                       "limit: must be between 1 and " + std::to_string(kMaxDlqPage), "limit"));
      }
      limit = static_cast<size_t>(v);
    } else {
      std::string n(name);
      return Reject(respond, Problem(400, "invalid-query", "Invalid query parameter",
                                     n + ": unknown or repeated; use after and limit", n));
    }
  }
  EventLoop* loop = ctx_.loop;
  LocalApiStats* stats = &stats_;
  ctx_.outbox->ListDeadLetters(
      after, limit, [loop, stats, limit, respond = std::move(respond)](Result<std::vector<DeadLetter>> result) mutable {
        if (!result.ok())
          return AnswerOnLoop(loop, stats, std::move(respond), OutboxProblem(result.status(), "listing dead letters"));
        JsonWriter w;
        w.BeginArray("dead_letters");
        for (const DeadLetter& d : *result) {
          w.BeginObject("")
              .Int("sequence", d.sequence)
              .String("id", d.id)
              .String("type", d.type)
              .String("topic", d.topic)
              .String("priority", PriorityName(d.priority))
              .String("reason", d.reason)
              .String("accepted_at", Rfc3339(d.accepted_at_us))
              .String("dead_lettered_at", Rfc3339(d.dead_lettered_at_us))
              .Int("attempts", d.attempts)
              .End();
        }
        w.End();
        // A full page may have more behind it: `next_after` continues there.
        if (result->size() >= limit && !result->empty()) {
          w.Int("next_after", result->back().sequence);
        } else {
          w.Null("next_after");
        }
        AnswerOnLoop(loop, stats, std::move(respond), JsonResponse(200, w.Finish()));
      });
}

void LocalApi::RetryDeadLetter(std::string id, HttpResponder respond) {
  EventLoop* loop = ctx_.loop;
  LocalApiStats* stats = &stats_;
  ctx_.outbox->RetryDeadLetter(0, std::move(id),
                               [loop, stats, respond = std::move(respond)](Result<AppendOutcome> result) mutable {
                                 HttpResponse r;
                                 if (result.ok()) {
                                   JsonWriter w;
                                   w.String("id", result->id).Int("sequence", result->sequence);
                                   r = JsonResponse(200, w.Finish());
                                 } else {
                                   r = OutboxProblem(result.status(), "retrying a dead letter");
                                 }
                                 AnswerOnLoop(loop, stats, std::move(respond), std::move(r));
                               });
}

void LocalApi::PurgeDeadLetters(std::string id, HttpResponder respond) {
  EventLoop* loop = ctx_.loop;
  LocalApiStats* stats = &stats_;
  ctx_.outbox->PurgeDeadLetters(0, std::move(id),
                                [loop, stats, respond = std::move(respond)](Result<uint64_t> result) mutable {
                                  HttpResponse r;
                                  if (result.ok()) {
                                    JsonWriter w;
                                    w.Int("deleted", static_cast<int64_t>(*result));
                                    r = JsonResponse(200, w.Finish());
                                  } else {
                                    r = OutboxProblem(result.status(), "deleting dead letters");
                                  }
                                  AnswerOnLoop(loop, stats, std::move(respond), std::move(r));
                                });
}

}  // namespace ws
