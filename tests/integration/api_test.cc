// The local API end to end: the real daemon (under the emulator in cross
// builds), a real mosquitto broker, and curl as the client. Every endpoint,
// every error status with its problem document, and the promise that a
// rejected request writes nothing (/v1/status last_sequence stays put).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_support.h"

namespace ws::testing {
namespace {

using std::chrono::steady_clock;

// SHA-256 of the secrets below (what the config stores).
constexpr char kProducerSecret[] = "producer-secret";
constexpr char kProducerHash[] = "fbc402f003c1454081cbc7d9d1a090c2fdd74ffa6f16e50b3f467fcb8bb27352";
constexpr char kSlowSecret[] = "slow-secret";
constexpr char kSlowHash[] = "02319493f88f3b483343e64ba47846673684e565f0940c5d8b351f451bcb179a";
constexpr char kOpsSecret[] = "ops-secret";
constexpr char kOpsHash[] = "32323cfa9ec9d62750daad0836a4cf3d7b60d23723b7852a529667deed01669f";

constexpr char kProblemPrefix[] = "https://waystation.dev/problems/";

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A JSON string member's value in a flat document ("" if absent).
std::string JsonString(const std::string& doc, const std::string& name) {
  std::string key = "\"" + name + "\":\"";
  size_t at = doc.find(key);
  if (at == std::string::npos) return "";
  size_t start = at + key.size();
  size_t end = doc.find('"', start);
  return end == std::string::npos ? "" : doc.substr(start, end - start);
}

int64_t JsonInt(const std::string& doc, const std::string& name) {
  std::string key = "\"" + name + "\":";
  size_t at = doc.find(key);
  if (at == std::string::npos) return -1;
  return std::stoll(doc.substr(at + key.size()));
}

struct Reply {
  int status = 0;                              // 0: curl itself failed
  std::map<std::string, std::string> headers;  // lowercased names
  std::string body;

  std::string Header(const std::string& name) const {
    auto it = headers.find(Lower(name));
    return it == headers.end() ? "" : it->second;
  }
  // The problem type's slug, "" if this is not a problem document.
  std::string Problem() const {
    std::string type = JsonString(body, "type");
    return type.rfind(kProblemPrefix, 0) == 0 ? type.substr(sizeof kProblemPrefix - 1) : "";
  }
  std::string Describe() const {
    std::string s = std::to_string(status) + " ";
    for (const auto& [k, v] : headers) s += k + ": " + v + "; ";
    return s + body;
  }
};

class ApiTest : public ::testing::Test {
 protected:
  // `api` is the body of the config's "api" object (without listen);
  // `backbone_port` 0 points the node at the test's broker.
  void StartDaemon(const std::string& api, const std::string& storage = "", uint16_t backbone_port = 0) {
    api_port_ = FreeLoopbackPort();
    std::string config = dir_.File("waystation.json");
    std::ofstream f(config);
    f << R"({
  "node": { "id": "gw-api", "site": "lab" },
  "storage": { "path": ")"
      << dir_.File("var/outbox.db") << "\"" << (storage.empty() ? "" : ", " + storage) << R"( },
  "api": { "listen": ["127.0.0.1:)"
      << api_port_ << "\"]" << (api.empty() ? "" : ", " + api) << R"( },
  "backbone": { "endpoints": [ { "name": "local", "host": "127.0.0.1", "port": )"
      << (backbone_port != 0 ? backbone_port : broker().port()) << R"( } ] },
  "log": { "level": "debug", "format": "text" }
})";
    f.close();
    daemon_ = std::make_unique<Subprocess>(DaemonArgv({"--config", config}), dir_.File("daemon.log"));
    ASSERT_TRUE(WaitUntil([&] { return Get("/v1/health").status == 200 || !daemon_->running(); }, 60000));
    ASSERT_TRUE(daemon_->running()) << Slurp(dir_.File("daemon.log"));
  }

  MosquittoBroker& broker() {
    if (!broker_) broker_ = std::make_unique<MosquittoBroker>(broker_config_);
    return *broker_;
  }

  std::string Url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(api_port_) + path; }

  // Runs curl with `args` (the URL included) and parses the one response.
  Reply Curl(std::vector<std::string> args) {
    std::vector<std::string> argv = {"curl", "-sS", "-i", "--max-time", "20"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    int rc = RunCommand(argv, &out, 30000);
    Reply r;
    if (rc != 0 && out.empty()) return r;
    // Interim "100 Continue" blocks come first.
    size_t pos = 0;
    while (true) {
      size_t end = out.find("\r\n\r\n", pos);
      if (end == std::string::npos) return r;
      std::string block = out.substr(pos, end - pos);
      pos = end + 4;
      if (block.rfind("HTTP/1.1 1", 0) == 0) continue;
      r.status = std::stoi(block.substr(9, 3));
      size_t line = block.find("\r\n");
      while (line != std::string::npos) {
        size_t next = block.find("\r\n", line + 2);
        std::string h = block.substr(line + 2, next == std::string::npos ? std::string::npos : next - line - 2);
        size_t colon = h.find(':');
        if (colon != std::string::npos) {
          std::string value = h.substr(colon + 1);
          while (!value.empty() && value.front() == ' ') value.erase(0, 1);
          r.headers[Lower(h.substr(0, colon))] = value;
        }
        line = next;
      }
      break;
    }
    r.body = out.substr(pos);
    return r;
  }

  std::vector<std::string> Auth(const std::string& secret) const {
    if (secret.empty()) return {};
    return {"-H", "Authorization: Bearer " + secret};
  }

  Reply Get(const std::string& path, const std::string& secret = "") {
    std::vector<std::string> args = Auth(secret);
    args.push_back(Url(path));
    return Curl(args);
  }

  // A request without a body; a POST still says Content-Length: 0 (the
  // server answers 411 to a POST with no length at all).
  Reply Send(const std::string& method, const std::string& path, const std::string& secret = "") {
    std::vector<std::string> args = Auth(secret);
    if (method == "POST") args.insert(args.end(), {"--data-binary", ""});
    args.insert(args.end(), {"-X", method, Url(path)});
    return Curl(args);
  }

  // POSTs `body` (written to a file, so size does not matter) with `headers`.
  Reply Post(const std::string& path, const std::string& body, std::vector<std::string> headers,
             const std::string& secret = "") {
    std::string file = dir_.File("body-" + std::to_string(++bodies_));
    std::ofstream(file, std::ios::binary) << body;
    std::vector<std::string> args = Auth(secret);
    for (const std::string& h : headers) args.insert(args.end(), {"-H", h});
    args.insert(args.end(), {"--data-binary", "@" + file, Url(path)});
    return Curl(args);
  }

  Reply PostEvent(const std::string& json, const std::string& secret = "", std::vector<std::string> extra = {}) {
    extra.push_back("Content-Type: application/cloudevents+json");
    return Post("/v1/events", json, extra, secret);
  }

  int64_t LastSequence(const std::string& secret = "") {
    Reply r = Get("/v1/status", secret);
    EXPECT_EQ(r.status, 200) << r.Describe();
    return JsonInt(r.body, "last_sequence");
  }

  static std::string Event(const std::string& id, const std::string& type = "com.acme.reading",
                           const std::string& data = "{\"v\":1}") {
    std::string e = R"({"specversion":"1.0",)";
    if (!id.empty()) e += "\"id\":\"" + id + "\",";
    return e + R"("source":"/line/3","type":")" + type + R"(","data":)" + data + "}";
  }

  TempDir dir_;
  std::string broker_config_;
  std::unique_ptr<MosquittoBroker> broker_;
  uint16_t api_port_ = 0;
  std::unique_ptr<Subprocess> daemon_;
  int bodies_ = 0;
};

#define EXPECT_PROBLEM(reply, want_status, want_slug)                                  \
  do {                                                                                 \
    const Reply& r_ = (reply);                                                         \
    EXPECT_EQ(r_.status, want_status) << r_.Describe();                                \
    EXPECT_EQ(r_.Header("content-type"), "application/problem+json") << r_.Describe(); \
    EXPECT_EQ(r_.Problem(), want_slug) << r_.Describe();                               \
    EXPECT_EQ(JsonInt(r_.body, "status"), want_status) << r_.Describe();               \
    EXPECT_FALSE(JsonString(r_.body, "title").empty()) << r_.Describe();               \
  } while (0)

TEST_F(ApiTest, EventsBatchesBinaryModeAndIdempotentRetries) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));
  Reply r = PostEvent(Event("api-1"));
  ASSERT_EQ(r.status, 202) << r.Describe() << Slurp(dir_.File("daemon.log"));
  EXPECT_EQ(JsonString(r.body, "id"), "api-1");
  int64_t seq1 = JsonInt(r.body, "sequence");
  EXPECT_GT(seq1, 0);

  // Binary mode: attributes in ce-* headers (percent-encoded), body as data.
  r = Post("/v1/events", "21.5",
           {"ce-specversion: 1.0", "ce-id: bin-1", "ce-source: /line%2F3", "ce-type: com.acme.reading",
            "ce-time: 2026-11-21T10:00:00Z", "Content-Type: text/plain"});
  ASSERT_EQ(r.status, 202) << r.Describe();
  EXPECT_EQ(JsonString(r.body, "id"), "bin-1");
  EXPECT_EQ(JsonInt(r.body, "sequence"), seq1 + 1);

  // A batch is one commit; ids are generated when absent.
  r = Post("/v1/events:batch", "[" + Event("b-1") + "," + Event("") + "]",
           {"Content-Type: application/cloudevents-batch+json"});
  ASSERT_EQ(r.status, 202) << r.Describe();
  EXPECT_NE(r.body.find("{\"id\":\"b-1\",\"sequence\":" + std::to_string(seq1 + 2) + "}"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"sequence\":" + std::to_string(seq1 + 3)), std::string::npos) << r.body;

  // Generated ids are time-ordered UUIDs (version 7): a later one sorts
  // after an earlier one, so the store's index of ids grows at one end.
  Reply g1 = PostEvent(Event(""));
  ASSERT_EQ(g1.status, 202) << g1.Describe();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  Reply g2 = PostEvent(Event(""));
  ASSERT_EQ(g2.status, 202) << g2.Describe();
  const std::string id1 = JsonString(g1.body, "id"), id2 = JsonString(g2.body, "id");
  ASSERT_EQ(id1.size(), 36u) << g1.body;
  ASSERT_EQ(id2.size(), 36u) << g2.body;
  EXPECT_EQ(id1[14], '7') << id1;
  EXPECT_LT(id1, id2);

  // Idempotency-Key: the retry answers the first answer, with the same
  // sequence, and appends nothing.
  std::string generated_id_event = Event("");
  Reply first = PostEvent(generated_id_event, "", {"Idempotency-Key: order-77"});
  ASSERT_EQ(first.status, 202) << first.Describe();
  EXPECT_EQ(first.Header("idempotent-replayed"), "");
  int64_t before = LastSequence();
  Reply retry = PostEvent(generated_id_event, "", {"Idempotency-Key: order-77"});
  EXPECT_EQ(retry.status, 202) << retry.Describe();
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(JsonInt(retry.body, "sequence"), JsonInt(first.body, "sequence"));
  EXPECT_EQ(retry.Header("idempotent-replayed"), "true");
  EXPECT_EQ(LastSequence(), before);
  // Batches too.
  std::string batch = "[" + Event("") + "]";
  Reply bfirst =
      Post("/v1/events:batch", batch, {"Content-Type: application/cloudevents-batch+json", "Idempotency-Key: b-77"});
  ASSERT_EQ(bfirst.status, 202);
  Reply bretry =
      Post("/v1/events:batch", batch, {"Content-Type: application/cloudevents-batch+json", "Idempotency-Key: b-77"});
  EXPECT_EQ(bretry.body, bfirst.body);
  EXPECT_EQ(bretry.Header("idempotent-replayed"), "true");

  // Keep-alive: two URLs in one curl share one connection.
  std::string out;
  ASSERT_EQ(RunCommand({"curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                        Url("/v1/health"), Url("/v1/status")},
                       &out),
            0);
  EXPECT_EQ(out, "200 1\n200 0\n");

  // The read-only endpoints.
  r = Get("/v1/ready");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(JsonString(r.body, "status"), "ready");
  r = Get("/v1/status");
  EXPECT_EQ(r.status, 200);
  for (const char* want : {"\"version\"", "\"uptime_s\"", "\"backbone\"", "\"backlog\"", "\"dlq\"", "\"alarms\""}) {
    EXPECT_NE(r.body.find(want), std::string::npos) << want << " in " << r.body;
  }
  r = Get("/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type").rfind("text/plain", 0), 0u);
  EXPECT_NE(r.body.find("waystation_api_events_accepted_total"), std::string::npos);
  EXPECT_NE(r.body.find("waystation_api_idempotent_replays_total 2"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("waystation_api_idempotency_keys 2"), std::string::npos) << r.body;
  r = Curl({"-I", Url("/v1/health")});  // HEAD
  EXPECT_EQ(r.status, 200) << r.Describe();
  EXPECT_TRUE(r.body.empty());
}

TEST_F(ApiTest, EveryErrorIsAProblemDocumentAndWritesNothing) {
  // No broker at the backbone port: events stay in the outbox, so an id
  // stays "stored" (for the 409) and last_sequence is the only thing that
  // moves.
  ASSERT_NO_FATAL_FAILURE(StartDaemon(std::string(R"("max_event_bytes": 4096, "tokens": [
      { "name": "line-3", "sha256": ")") + kProducerHash +
                                          R"(", "allow_types": ["com.acme.*"] },
      { "name": "slow", "sha256": ")" + kSlowHash +
                                          R"(", "rate_per_s": 0.001, "burst": 1 },
      { "name": "ops", "sha256": ")" + kOpsHash +
                                          R"(", "admin": true } ])",
                                      "", FreeLoopbackPort()));
  const std::string tok = kProducerSecret;
  Reply ok = PostEvent(Event("first"), tok);
  ASSERT_EQ(ok.status, 202) << ok.Describe();
  const int64_t last = LastSequence(tok);
  ASSERT_EQ(last, JsonInt(ok.body, "sequence"));

  struct Case {
    const char* what;
    std::function<Reply()> send;
    int status;
    std::string slug;
    std::string field;  // "" = not checked
  };
  const std::string big_event = Event("big", "com.acme.reading", "\"" + std::string(5000, 'x') + "\"");
  const std::vector<Case> cases = {
      {"malformed JSON", [&] { return PostEvent("{\"specversion\":", tok); }, 400, "invalid-event", "body"},
      {"bad attribute",
       [&] {
         return PostEvent(R"({"specversion":"1.0","id":"t","source":"/s","type":"com.acme.x","time":"yesterday"})",
                          tok);
       },
       400, "invalid-event", "time"},
      {"missing type", [&] { return PostEvent(R"({"specversion":"1.0","id":"t","source":"/s"})", tok); }, 400,
       "invalid-event", "type"},
      {"bad binary-mode header",
       [&] {
         return Post("/v1/events", "x",
                     {"ce-specversion: 1.0", "ce-source: /s", "ce-type: com.acme.x", "ce-time: noon",
                      "Content-Type: text/plain"},
                     tok);
       },
       400, "invalid-event", "ce-time"},
      {"bad batch element",
       [&] {
         return Post("/v1/events:batch", "[" + Event("ok-1") + ",{\"specversion\":\"1.0\"}]",
                     {"Content-Type: application/cloudevents-batch+json"}, tok);
       },
       400, "invalid-event", "[1].source"},
      {"bad Idempotency-Key", [&] { return PostEvent(Event("k"), tok, {"Idempotency-Key: " + std::string(300, 'k')}); },
       400, "invalid-idempotency-key", "idempotency-key"},
      {"bad dlq query", [&] { return Get("/v1/dlq?limit=0", kOpsSecret); }, 400, "invalid-query", "limit"},
      {"no token", [&] { return PostEvent(Event("n")); }, 401, "unauthorized", "authorization"},
      {"wrong token", [&] { return PostEvent(Event("n"), "guess"); }, 401, "unauthorized", "authorization"},
      {"status needs a token", [&] { return Get("/v1/status"); }, 401, "unauthorized", "authorization"},
      {"type not allowed", [&] { return PostEvent(Event("o", "org.other.reading"), tok); }, 403, "type-not-allowed",
       "type"},
      {"dlq needs an admin token", [&] { return Get("/v1/dlq", tok); }, 403, "admin-required", ""},
      {"no such path", [&] { return Get("/v1/nothing", tok); }, 404, "not-found", ""},
      {"wrong method", [&] { return Get("/v1/events", tok); }, 405, "method-not-allowed", ""},
      {"same id, other content", [&] { return PostEvent(Event("first", "com.acme.reading", "{\"v\":2}"), tok); }, 409,
       "id-conflict", "id"},
      {"no length",
       [&] {
         std::vector<std::string> a = Auth(tok);
         a.insert(a.end(), {"-X", "POST", "-H", "Content-Type: application/cloudevents+json", Url("/v1/events")});
         return Curl(a);
       },
       411, "length-required", ""},
      {"event too large", [&] { return PostEvent(big_event, tok); }, 413, "event-too-large", ""},
      {"body too large", [&] { return PostEvent(std::string(1100 * 1024, ' '), tok); }, 413, "body-too-large", ""},
      {"URL too long", [&] { return Get("/v1/status?pad=" + std::string(5000, 'a'), tok); }, 414, "url-too-long", ""},
      {"data and data_base64",
       [&] {
         return PostEvent(R"({"specversion":"1.0","id":"d","source":"/s","type":"com.acme.x","data":1,)"
                          R"("data_base64":"AA=="})",
                          tok);
       },
       422, "conflicting-attributes", "data"},
      {"one id twice in a batch",
       [&] {
         return Post("/v1/events:batch", "[" + Event("twin") + "," + Event("other") + "," + Event("twin") + "]",
                     {"Content-Type: application/cloudevents-batch+json"}, tok);
       },
       422, "duplicate-id-in-batch", "[2].id"},
      {"wrong media type", [&] { return Post("/v1/events", Event("m"), {"Content-Type: text/plain"}, tok); }, 415,
       "unsupported-media-type", "content-type"},
      {"batch media type", [&] { return Post("/v1/events:batch", "[]", {"Content-Type: application/json"}, tok); }, 415,
       "unsupported-media-type", "content-type"},
      {"headers too large",
       [&] {
         std::vector<std::string> a = Auth(tok);
         a.insert(a.end(), {"-H", "X-Pad: " + std::string(20000, 'p'), Url("/v1/status")});
         return Curl(a);
       },
       431, "headers-too-large", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Reply r = c.send();
    EXPECT_PROBLEM(r, c.status, c.slug);
    if (!c.field.empty()) {
      EXPECT_EQ(JsonString(r.body, "field"), c.field) << r.Describe();
    }
    if (c.status == 401) {
      EXPECT_FALSE(r.Header("www-authenticate").empty()) << r.Describe();
    }
    if (c.status == 405) {
      EXPECT_EQ(r.Header("allow"), "POST") << r.Describe();
    }
    EXPECT_EQ(LastSequence(tok), last) << "a rejected request wrote to the outbox";
  }

  // 422: a key reused for another request.
  Reply keyed = PostEvent(Event("keyed-1"), tok, {"Idempotency-Key: reuse-me"});
  ASSERT_EQ(keyed.status, 202) << keyed.Describe();
  const int64_t after_keyed = LastSequence(tok);
  Reply reused = PostEvent(Event("keyed-2"), tok, {"Idempotency-Key: reuse-me"});
  EXPECT_PROBLEM(reused, 422, "idempotency-key-reused");
  EXPECT_EQ(JsonString(reused.body, "field"), "idempotency-key");
  EXPECT_EQ(LastSequence(tok), after_keyed);

  // 429: the slow token's bucket holds one event and refills in 1000 s.
  ASSERT_EQ(PostEvent(Event("slow-1"), kSlowSecret).status, 202);
  const int64_t after_slow = LastSequence(tok);
  Reply limited = PostEvent(Event("slow-2"), kSlowSecret);
  EXPECT_PROBLEM(limited, 429, "rate-limited");
  ASSERT_FALSE(limited.Header("retry-after").empty()) << limited.Describe();
  EXPECT_GE(std::stoi(limited.Header("retry-after")), 900) << limited.Describe();
  EXPECT_EQ(LastSequence(tok), after_slow);
  EXPECT_NE(Get("/metrics", tok).body.find("waystation_api_rate_limited_total 1\n"), std::string::npos);
  // Other tokens are not affected.
  EXPECT_EQ(PostEvent(Event("fast-1"), tok).status, 202);

  // Probes stay open without a token.
  EXPECT_EQ(Get("/v1/health").status, 200);
  EXPECT_EQ(Get("/v1/ready").status, 200);
}

TEST_F(ApiTest, FullStoreAnswers507AndWritesNothing) {
  // No broker at the backbone port: nothing drains, so the store fills.
  ASSERT_NO_FATAL_FAILURE(StartDaemon("", R"("max_bytes": 1048576, "control_reserve_bytes": 0)", FreeLoopbackPort()));
  const std::string data = "\"" + std::string(200 * 1024, 'd') + "\"";
  Reply r;
  int accepted = 0;
  for (int i = 0; i < 20; ++i) {
    r = PostEvent(Event("fill-" + std::to_string(i), "com.acme.reading", data));
    if (r.status != 202) break;
    ++accepted;
  }
  EXPECT_GE(accepted, 3);
  EXPECT_PROBLEM(r, 507, "store-full");
  const int64_t last = LastSequence();
  EXPECT_EQ(last, accepted);
  Reply again = PostEvent(Event("fill-more", "com.acme.reading", data));
  EXPECT_PROBLEM(again, 507, "store-full");
  EXPECT_EQ(LastSequence(), last);
  // Small events may still fit in what is left; the node keeps serving.
  EXPECT_EQ(Get("/v1/ready").status, 200);
}

TEST_F(ApiTest, DeadLettersCanBeListedRetriedAndDeleted) {
  // The broker refuses one topic (PUBACK "not authorized"), which the node
  // dead-letters.
  std::string acl = dir_.File("acl");
  std::ofstream(acl) << "topic readwrite #\n"
                     << "topic deny waystation/lab/gw-api/events/com.acme.forbidden\n";
  // Started as root, mosquitto reads the ACL after dropping to its own user.
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(chmod(acl.c_str(), 0644), 0);
  broker_config_ = "acl_file " + acl + "\n";
  ASSERT_TRUE(broker().running()) << Slurp(broker().log_path());
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));
  Reply probe = Get("/v1/dlq");
  if (probe.status == 501) GTEST_SKIP() << "this build's store does not list dead letters yet: " << probe.body;
  ASSERT_EQ(probe.status, 200) << probe.Describe();
  EXPECT_NE(probe.body.find("\"dead_letters\":[]"), std::string::npos) << probe.body;

  ASSERT_EQ(PostEvent(Event("dead-1", "com.acme.forbidden")).status, 202);
  ASSERT_EQ(PostEvent(Event("dead-2", "com.acme.forbidden")).status, 202);
  Reply list;
  ASSERT_TRUE(WaitUntil(
      [&] {
        list = Get("/v1/dlq");
        return list.body.find("dead-2") != std::string::npos;
      },
      30000))
      << list.Describe() << Slurp(dir_.File("daemon.log"));
  EXPECT_NE(list.body.find("\"id\":\"dead-1\""), std::string::npos);
  EXPECT_NE(list.body.find("\"type\":\"com.acme.forbidden\""), std::string::npos);
  EXPECT_NE(list.body.find("Not authorized"), std::string::npos) << list.body;
  EXPECT_NE(list.body.find("\"next_after\":null"), std::string::npos) << list.body;

  // Paging: one per page, continuing after the last sequence seen.
  Reply page = Get("/v1/dlq?limit=1");
  ASSERT_EQ(page.status, 200) << page.Describe();
  EXPECT_NE(page.body.find("dead-1"), std::string::npos) << page.body;
  int64_t next = JsonInt(page.body, "next_after");
  ASSERT_GT(next, 0) << page.body;
  page = Get("/v1/dlq?limit=1&after=" + std::to_string(next));
  EXPECT_NE(page.body.find("dead-2"), std::string::npos) << page.body;
  EXPECT_EQ(page.body.find("dead-1"), std::string::npos) << page.body;
  EXPECT_PROBLEM(Get("/v1/dlq?limit=5000"), 400, "invalid-query");

  // Retry puts it back under a new sequence.
  int64_t before = LastSequence();
  Reply retry = Send("POST", "/v1/dlq/dead-1:retry");
  ASSERT_EQ(retry.status, 200) << retry.Describe();
  EXPECT_EQ(JsonString(retry.body, "id"), "dead-1");
  EXPECT_GT(JsonInt(retry.body, "sequence"), before);

  // Delete one, then purge the rest.
  Reply del = Send("DELETE", "/v1/dlq/dead-2");
  ASSERT_EQ(del.status, 200) << del.Describe();
  EXPECT_EQ(JsonInt(del.body, "deleted"), 1);
  EXPECT_PROBLEM(Send("DELETE", "/v1/dlq/dead-2"), 404, "dead-letter-not-found");
  EXPECT_PROBLEM(Send("POST", "/v1/dlq/no-such:retry"), 404, "dead-letter-not-found");
  // dead-1 was retried and is refused again by the broker.
  ASSERT_TRUE(WaitUntil([&] { return Get("/v1/dlq").body.find("dead-1") != std::string::npos; }, 30000));
  Reply purge = Send("DELETE", "/v1/dlq");
  ASSERT_EQ(purge.status, 200) << purge.Describe();
  EXPECT_GE(JsonInt(purge.body, "deleted"), 1);
  EXPECT_NE(Get("/v1/dlq").body.find("\"dead_letters\":[]"), std::string::npos);
}

// Every operation docs/openapi.yaml declares is served: the answer is not
// 405, and not the generic 404 for an unknown path.
TEST_F(ApiTest, EveryOpenApiOperationIsServed) {
  std::string spec = Slurp(SourceDir() + "/docs/openapi.yaml");
  ASSERT_FALSE(spec.empty());
  // Our file's layout: "paths:" then two-space-indented path keys, each with
  // four-space-indented method keys.
  std::vector<std::pair<std::string, std::string>> operations;
  bool in_paths = false;
  std::string path;
  size_t start = 0;
  while (start < spec.size()) {
    size_t end = spec.find('\n', start);
    std::string line = spec.substr(start, end == std::string::npos ? std::string::npos : end - start);
    start = end == std::string::npos ? spec.size() : end + 1;
    if (line == "paths:") {
      in_paths = true;
      continue;
    }
    if (!in_paths || line.empty()) continue;
    if (line[0] != ' ' && line[0] != '#') break;  // the next top-level key
    if (line.rfind("  /", 0) == 0 && line.back() == ':') {
      path = line.substr(2, line.size() - 3);
      if (path.size() > 1 && path.front() == '\'') path = path.substr(1, path.size() - 2);
      if (path.size() > 1 && path.front() == '"') path = path.substr(1, path.size() - 2);
      continue;
    }
    static const std::set<std::string> kMethods = {"get", "post", "delete", "put", "patch", "head"};
    if (line.rfind("    ", 0) == 0 && line[4] != ' ' && line.back() == ':') {
      std::string m = line.substr(4, line.size() - 5);
      if (kMethods.count(m) != 0) operations.emplace_back(path, m);
    }
  }
  ASSERT_GE(operations.size(), 10u) << "parsed too few operations from docs/openapi.yaml";

  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));
  for (const auto& [templ, method] : operations) {
    std::string p = templ;
    size_t brace = p.find('{');
    if (brace != std::string::npos) p.replace(brace, p.find('}') - brace + 1, "no-such-id");
    std::string m = Lower(method);
    for (char& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    Reply r = m == "GET" ? Get(p) : m == "HEAD" ? Curl({"-I", Url(p)}) : Send(m, p);
    SCOPED_TRACE(m + " " + p);
    EXPECT_NE(r.status, 0) << "no answer";
    EXPECT_NE(r.status, 405) << r.Describe();
    EXPECT_FALSE(r.status == 404 && r.Problem() == "not-found") << r.Describe();
  }
}

}  // namespace
}  // namespace ws::testing
