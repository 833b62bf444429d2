#include "firmware/local_api.h"

#include "adapters/json/json_codec.h"
#include "platform/log.h"

namespace ws {
namespace {

constexpr size_t kMaxBatchEvents = 1000;

std::string_view MediaType(const std::string* content_type) {
  if (content_type == nullptr) return {};
  std::string_view v(*content_type);
  size_t semi = v.find(';');
  if (semi != std::string_view::npos) v = v.substr(0, semi);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

bool IsJsonMediaType(std::string_view m) {
  return m == "application/json" || m == "text/json" || (m.size() > 5 && m.substr(m.size() - 5) == "+json");
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// CloudEvents HTTP binary mode percent-encodes header values.
Result<std::string> PercentDecode(std::string_view in, std::string_view header) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size() || HexDigit(in[i + 1]) < 0 || HexDigit(in[i + 2]) < 0) {
      return InvalidArgument(std::string(header) + ": bad percent-encoding");
    }
    out += static_cast<char>(HexDigit(in[i + 1]) * 16 + HexDigit(in[i + 2]));
    i += 2;
  }
  return out;
}

// The attribute a validation message starts with ("time: must be ...").
std::string_view FieldOf(const std::string& message) {
  size_t colon = message.find(':');
  return colon == std::string::npos ? std::string_view() : std::string_view(message).substr(0, colon);
}

Result<Event> ParseBinaryMode(const HttpRequest& req, std::string_view media_type) {
  Event e;
  bool have_specversion = false;
  for (const auto& [name, raw] : req.headers) {
    if (name.size() <= 3 || name.compare(0, 3, "ce-") != 0) continue;
    std::string attr = name.substr(3);
    WS_ASSIGN_OR_RETURN(std::string value, PercentDecode(raw, name));
    if (attr == "specversion") {
      e.specversion = std::move(value);
      have_specversion = true;
    } else if (attr == "id") {
      e.id = std::move(value);
    } else if (attr == "source") {
      e.source = std::move(value);
    } else if (attr == "type") {
      e.type = std::move(value);
    } else if (attr == "datacontenttype" || attr == "data" || attr == "data_base64") {
      return InvalidArgument(name + ": not allowed as a header in binary mode");
    } else {
      if (!IsValidAttributeName(attr)) return InvalidArgument(name + ": attribute names are 1-20 characters of a-z and 0-9");
      if (e.FindAttribute(attr) != nullptr) return InvalidArgument(name + ": appears more than once");
      e.attributes.emplace_back(std::move(attr), std::move(value));
    }
  }
  if (!have_specversion) return InvalidArgument("ce-specversion: required");
  if (!media_type.empty()) e.SetAttribute("datacontenttype", std::string(media_type));
  if (!req.body.empty()) {
    if (IsJsonMediaType(media_type) || media_type.empty()) {
      if (!IsValidJson(req.body)) return InvalidArgument("data: body is not valid JSON for a JSON content type");
      e.data_kind = DataKind::kJson;
    } else {
      e.data_kind = DataKind::kBinary;
    }
    e.data = req.body;
  }
  return e;
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

LocalApi::LocalApi(LocalApiContext context) : ctx_(std::move(context)) {}

void LocalApi::Reject(HttpResponder& respond, HttpResponse response) {
  stats_.requests_rejected.fetch_add(1, std::memory_order_relaxed);
  respond(std::move(response));
}

const TokenConfig* LocalApi::Authenticate(const HttpRequest& req, HttpResponse* problem, bool* denied) {
  *denied = false;
  if (ctx_.api->tokens.empty()) return nullptr;  // anonymous: only local listeners exist (checked at start)
  const std::string* auth = req.Header("authorization");
  static constexpr std::string_view kBearer = "Bearer ";
  if (auth == nullptr || auth->size() <= kBearer.size() || auth->compare(0, kBearer.size(), kBearer) != 0) {
    *problem = Problem(401, "unauthorized", "Missing bearer token", "send Authorization: Bearer <token>",
                       "authorization");
    problem->headers.emplace_back("WWW-Authenticate", "Bearer");
    *denied = true;
    return nullptr;
  }
  std::string hash = Sha256Hex(std::string_view(*auth).substr(kBearer.size()));
  const TokenConfig* found = nullptr;
  for (const TokenConfig& t : ctx_.api->tokens) {
    // Compare with every token so the time taken does not reveal which matched.
    if (ConstantTimeEquals(hash, t.sha256)) found = &t;
  }
  if (found == nullptr) {
    *problem = Problem(401, "unauthorized", "Invalid bearer token", "the token is not known to this node",
                       "authorization");
    problem->headers.emplace_back("WWW-Authenticate", "Bearer error=\"invalid_token\"");
    *denied = true;
  }
  return found;
}

void LocalApi::Handle(HttpRequest&& req, HttpResponder respond) {
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  const std::string& path = req.path;
  if (path == "/v1/health") {
    if (req.method != "GET") return Reject(respond, Problem(405, "method-not-allowed", "Method not allowed", "use GET"));
    return respond(JsonResponse(200, "{\"status\":\"ok\"}"));
  }
  if (path == "/v1/ready") {
    if (req.method != "GET") return Reject(respond, Problem(405, "method-not-allowed", "Method not allowed", "use GET"));
    if (ctx_.ready && !ctx_.ready()) {
      return Reject(respond, Problem(503, "not-ready", "Not ready", "the store is not writable yet"));
    }
    return respond(JsonResponse(200, "{\"status\":\"ready\"}"));
  }

  bool is_events = path == "/v1/events";
  bool is_batch = path == "/v1/events:batch";
  bool is_status = path == "/v1/status";
  bool is_metrics = path == "/metrics";
  if (!is_events && !is_batch && !is_status && !is_metrics) {
    return Reject(respond, Problem(404, "not-found", "Not found", "no such resource: " + path));
  }
  HttpResponse problem;
  bool denied = false;
  const TokenConfig* token = Authenticate(req, &problem, &denied);
  if (denied) return Reject(respond, std::move(problem));

  if (is_status || is_metrics) {
    if (req.method != "GET") return Reject(respond, Problem(405, "method-not-allowed", "Method not allowed", "use GET"));
    if (is_status) return respond(JsonResponse(200, ctx_.status_json()));
    HttpResponse r;
    r.status = 200;
    r.content_type = "text/plain; version=0.0.4";
    r.body = ctx_.metrics_text();
    return respond(std::move(r));
  }
  if (req.method != "POST") {
    HttpResponse r = Problem(405, "method-not-allowed", "Method not allowed", "use POST");
    r.headers.emplace_back("Allow", "POST");
    return Reject(respond, std::move(r));
  }
  if (is_batch) return PostBatch(std::move(req), std::move(respond), token);
  PostEvent(std::move(req), std::move(respond), token);
}

void LocalApi::PostEvent(HttpRequest&& req, HttpResponder respond, const TokenConfig* token) {
  std::string_view media = MediaType(req.Header("content-type"));
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
                                    : ParseBinaryMode(req, media);
  if (!parsed.ok()) {
    Status st = parsed.status();
    const std::string& m = st.message();
    return Reject(respond, Problem(400, "invalid-event", "Invalid event", m, FieldOf(m)));
  }
  if (token != nullptr) {
    if (!TypeAllowed(*token, parsed->type)) {
      return Reject(respond, Problem(403, "type-not-allowed", "Event type not allowed",
                                     "token \"" + token->name + "\" may not publish " + parsed->type, "type"));
    }
    parsed->SetAttribute("producer", token->name);
  }
  std::vector<Event> events;
  events.push_back(std::move(parsed).value());
  Append(std::move(events), /*batch=*/false, std::move(respond));
}

void LocalApi::PostBatch(HttpRequest&& req, HttpResponder respond, const TokenConfig* token) {
  std::string_view media = MediaType(req.Header("content-type"));
  if (media != "application/cloudevents-batch+json") {
    return Reject(respond, Problem(415, "unsupported-media-type", "Unsupported media type",
                                   "send application/cloudevents-batch+json", "content-type"));
  }
  Result<std::vector<Event>> parsed = ParseEventBatch(req.body, /*allow_missing_id=*/true, kMaxBatchEvents);
  if (!parsed.ok()) {
    Status st = parsed.status();
    const std::string& m = st.message();
    int status = st.code() == StatusCode::kResourceExhausted ? 413 : 400;
    return Reject(respond, Problem(status, status == 413 ? "batch-too-large" : "invalid-event",
                                   status == 413 ? "Batch too large" : "Invalid event", m, FieldOf(m)));
  }
  for (size_t i = 0; i < parsed->size(); ++i) {
    if ((*parsed)[i].ApproximateBytes() > ctx_.api->max_event_bytes) {
      return Reject(respond, Problem(413, "event-too-large", "Event too large",
                                     "[" + std::to_string(i) + "] exceeds " +
                                         std::to_string(ctx_.api->max_event_bytes) + " bytes"));
    }
    if (token != nullptr) {
      if (!TypeAllowed(*token, (*parsed)[i].type)) {
        return Reject(respond, Problem(403, "type-not-allowed", "Event type not allowed",
                                       "[" + std::to_string(i) + "]: token \"" + token->name + "\" may not publish " +
                                           (*parsed)[i].type,
                                       "[" + std::to_string(i) + "].type"));
      }
      (*parsed)[i].SetAttribute("producer", token->name);
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
      Result<std::string> id = ctx_.random->UuidV4();
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
    entry.expires_at_us = route.ttl_s > 0 ? ctx_.clock->WallMicros() + route.ttl_s * 1'000'000 : 0;
    entry.event = std::move(e);
    entries.push_back(std::move(entry));
  }
  size_t n = entries.size();
  EventLoop* loop = ctx_.loop;
  LocalApiStats* stats = &stats_;
  ctx_.outbox->Append(std::move(entries), [loop, stats, batch, n, respond = std::move(respond)](
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
      r.status = 202;
      r.content_type = "application/json";
      r.body = w.Finish();
      stats->events_accepted.fetch_add(n, std::memory_order_relaxed);
    } else {
      const Status& s = result.status();
      stats->requests_rejected.fetch_add(1, std::memory_order_relaxed);
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
    loop->Post([respond = std::move(respond), r = std::move(r)]() mutable { respond(std::move(r)); });
  });
}

}  // namespace ws
