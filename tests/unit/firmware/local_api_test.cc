// The local API's policy with the store replaced by a fake that answers when
// the test says so: what no real store can do on demand (hold a commit open,
// refuse with a chosen error), and a clock the test moves.
#include "firmware/local_api.h"

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/tls_crypto/crypto.h"
#include "core/routing.h"
#include "platform/clock.h"
#include "platform/event_loop.h"

namespace ws {
namespace {

class FakeOutbox final : public Outbox {
 public:
  // Appends wait in `pending` until Complete(); with auto_complete they
  // commit at once with increasing sequences.
  bool auto_complete = true;
  std::optional<Status> fail_with;
  std::deque<std::pair<std::vector<OutboxEntry>, AppendDone>> pending;
  std::vector<OutboxEntry> stored;
  int64_t next_sequence = 1;

  Status dlq_status = Status::Ok();
  std::vector<ws::DeadLetter> dead_letters;
  int64_t last_after = -1;
  size_t last_limit = 0;
  std::string last_id;
  int purges = 0;

  void Append(std::vector<OutboxEntry> entries, AppendDone done) override {
    pending.emplace_back(std::move(entries), std::move(done));
    if (auto_complete) Complete();
  }
  void Complete() {
    auto [entries, done] = std::move(pending.front());
    pending.pop_front();
    if (fail_with) return done(*fail_with);
    std::vector<AppendOutcome> out;
    for (OutboxEntry& e : entries) {
      out.push_back(AppendOutcome{next_sequence++, e.event.id, false});
      stored.push_back(std::move(e));
    }
    done(std::move(out));
  }
  void Lease(size_t, LeaseDone done) override { done(std::vector<LeasedEvent>{}); }
  void Ack(std::vector<int64_t>, StatusDone done) override { done(Status::Ok()); }
  void ResetLeases() override {}
  void DeadLetter(int64_t, std::string, StatusDone done) override { done(Status::Ok()); }
  void Nack(std::vector<int64_t>, int64_t, StatusDone done) override { done(Status::Ok()); }
  void ListDeadLetters(int64_t after, size_t limit,
                       std::function<void(Result<std::vector<ws::DeadLetter>>)> done) override {
    last_after = after;
    last_limit = limit;
    if (!dlq_status.ok()) return done(dlq_status);
    done(dead_letters);
  }
  void RetryDeadLetter(int64_t, std::string id, std::function<void(Result<AppendOutcome>)> done) override {
    last_id = id;
    if (!dlq_status.ok()) return done(dlq_status);
    done(AppendOutcome{next_sequence++, id, false});
  }
  void PurgeDeadLetters(int64_t, std::string id, std::function<void(Result<uint64_t>)> done) override {
    last_id = id;
    ++purges;
    if (!dlq_status.ok()) return done(dlq_status);
    done(uint64_t{id.empty() ? 3u : 1u});
  }
  void Replay(const ReplayRange&, std::function<void(Result<uint64_t>)> done) override { done(uint64_t{0}); }
  void SetAppendListener(std::function<void()>) override {}
  OutboxStats Stats() const override { return {}; }
};

constexpr char kEvent[] = R"({"specversion":"1.0","id":"e-1","source":"/s","type":"com.acme.t","data":1})";

class LocalApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(loop).value();
    auto random = RandomSource::Create();
    ASSERT_TRUE(random.ok());
    random_ = std::move(random).value();
  }

  void Start() {
    LocalApiContext ctx;
    ctx.loop = loop_.get();
    ctx.clock = &clock_;
    ctx.outbox = &outbox_;
    ctx.router = &router_;
    ctx.random = random_.get();
    ctx.api = &api_;
    ctx.ready = [this] { return ready_; };
    ctx.status_json = [] { return std::string("{}"); };
    ctx.metrics_text = [] { return std::string(); };
    local_api_ = std::make_unique<LocalApi>(std::move(ctx));
  }

  // Runs what was posted to the loop (answers after a commit).
  void Drain() {
    EventLoop* loop = loop_.get();
    loop->Post([loop] { loop->Stop(); });
    ASSERT_TRUE(loop->Run().ok());
  }

  // Sends a request; the answer lands in the returned slot (maybe later).
  std::shared_ptr<std::optional<HttpResponse>> Send(HttpRequest req) {
    auto slot = std::make_shared<std::optional<HttpResponse>>();
    local_api_->Handle(std::move(req), [slot](HttpResponse r) { *slot = std::move(r); });
    return slot;
  }

  HttpResponse Call(HttpRequest req) {
    auto slot = Send(std::move(req));
    Drain();
    EXPECT_TRUE(slot->has_value()) << "no answer";
    return slot->has_value() ? **slot : HttpResponse{};
  }

  static HttpRequest Post(std::string body = kEvent, std::string key = "", std::string path = "/v1/events") {
    HttpRequest r;
    r.method = "POST";
    r.headers.emplace_back("content-type", path == "/v1/events:batch" ? "application/cloudevents-batch+json"
                                                                      : "application/cloudevents+json");
    r.path = std::move(path);
    if (!key.empty()) r.headers.emplace_back("idempotency-key", key);
    r.body = std::move(body);
    return r;
  }
  static HttpRequest Get(std::string path, std::string query = "", std::string method = "GET") {
    HttpRequest r;
    r.method = std::move(method);
    r.path = std::move(path);
    r.query = std::move(query);
    return r;
  }
  static HttpRequest WithToken(HttpRequest r, const std::string& token) {
    r.headers.emplace_back("authorization", "Bearer " + token);
    return r;
  }

  static std::string HeaderOf(const HttpResponse& r, const std::string& name) {
    for (const auto& [k, v] : r.headers) {
      if (k == name) return v;
    }
    return "";
  }
  static bool IsProblem(const HttpResponse& r, int status, const std::string& slug) {
    return r.status == status && r.content_type == "application/problem+json" &&
           r.body.find("\"type\":\"https://waystation.dev/problems/" + slug + "\"") != std::string::npos;
  }

  TokenConfig Token(const std::string& name, const std::string& secret) {
    TokenConfig t;
    t.name = name;
    t.sha256 = Sha256Hex(secret);
    return t;
  }

  FakeClock clock_;
  FakeOutbox outbox_;
  Router router_{{}, "ws/site/node", "site", "node"};
  ApiConfig api_;
  bool ready_ = true;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<RandomSource> random_;
  std::unique_ptr<LocalApi> local_api_;
};

TEST_F(LocalApiTest, RetryWithSameKeyReplaysTheFirstAnswer) {
  Start();
  HttpResponse first = Call(Post(kEvent, "key-1"));
  ASSERT_EQ(first.status, 202) << first.body;
  HttpResponse again = Call(Post(kEvent, "key-1"));
  EXPECT_EQ(again.status, 202);
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(HeaderOf(again, "Idempotent-Replayed"), "true");
  EXPECT_EQ(outbox_.stored.size(), 1u) << "a replay must not append again";
  EXPECT_EQ(local_api_->stats().idempotent_replays.load(), 1u);

  // The RFC 8941 quoted form names the same key.
  EXPECT_EQ(HeaderOf(Call(Post(kEvent, "\"key-1\"")), "Idempotent-Replayed"), "true");
}

TEST_F(LocalApiTest, SameKeyWithDifferentBodyIs422AndWritesNothing) {
  Start();
  ASSERT_EQ(Call(Post(kEvent, "key-1")).status, 202);
  std::string other = R"({"specversion":"1.0","id":"e-2","source":"/s","type":"com.acme.t"})";
  HttpResponse r = Call(Post(other, "key-1"));
  EXPECT_TRUE(IsProblem(r, 422, "idempotency-key-reused")) << r.body;
  EXPECT_NE(r.body.find("\"field\":\"idempotency-key\""), std::string::npos) << r.body;
  EXPECT_EQ(outbox_.stored.size(), 1u);
}

TEST_F(LocalApiTest, BinaryModeHeadersArePartOfTheRequestIdentity) {
  Start();
  auto binary = [](const std::string& type) {
    HttpRequest r;
    r.method = "POST";
    r.path = "/v1/events";
    r.headers = {{"ce-specversion", "1.0"},
                 {"ce-source", "/s"},
                 {"ce-type", type},
                 {"content-type", "text/plain"},
                 {"idempotency-key", "k"}};
    r.body = "same body";
    return r;
  };
  ASSERT_EQ(Call(binary("com.acme.a")).status, 202);
  EXPECT_TRUE(IsProblem(Call(binary("com.acme.b")), 422, "idempotency-key-reused"));
}

TEST_F(LocalApiTest, SecondRequestWhileTheFirstIsCommittingIs409) {
  outbox_.auto_complete = false;
  Start();
  auto first = Send(Post(kEvent, "key-1"));
  ASSERT_FALSE(first->has_value());
  HttpResponse second = Call(Post(kEvent, "key-1"));
  EXPECT_TRUE(IsProblem(second, 409, "idempotency-key-in-flight")) << second.body;
  EXPECT_EQ(HeaderOf(second, "Retry-After"), "1");

  outbox_.Complete();
  Drain();
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->status, 202);
  outbox_.auto_complete = true;
  HttpResponse third = Call(Post(kEvent, "key-1"));
  EXPECT_EQ(third.body, (*first)->body);
  EXPECT_EQ(HeaderOf(third, "Idempotent-Replayed"), "true");
}

TEST_F(LocalApiTest, FailedRequestIsNotRememberedSoItCanBeRetried) {
  outbox_.fail_with = Status(StatusCode::kResourceExhausted, "outbox full");
  Start();
  HttpResponse r = Call(Post(kEvent, "key-1"));
  EXPECT_TRUE(IsProblem(r, 507, "store-full")) << r.body;
  outbox_.fail_with.reset();
  r = Call(Post(kEvent, "key-1"));
  EXPECT_EQ(r.status, 202) << r.body;
  EXPECT_EQ(HeaderOf(r, "Idempotent-Replayed"), "");
  // An invalid event is not remembered either.
  r = Call(Post("{", "key-2"));
  EXPECT_TRUE(IsProblem(r, 400, "invalid-event"));
  EXPECT_EQ(Call(Post(kEvent, "key-2")).status, 202);
}

TEST_F(LocalApiTest, KeysAreScopedPerToken) {
  api_.tokens = {Token("line-3", "secret-3"), Token("line-4", "secret-4")};
  Start();
  HttpResponse a = Call(WithToken(Post(kEvent, "k"), "secret-3"));
  ASSERT_EQ(a.status, 202) << a.body;
  std::string other = R"({"specversion":"1.0","id":"e-9","source":"/s","type":"com.acme.t"})";
  HttpResponse b = Call(WithToken(Post(other, "k"), "secret-4"));
  EXPECT_EQ(b.status, 202) << b.body;
  EXPECT_EQ(HeaderOf(b, "Idempotent-Replayed"), "");
}

TEST_F(LocalApiTest, MalformedKeyIs400) {
  Start();
  HttpResponse r = Call(Post(kEvent, std::string(256, 'k')));
  EXPECT_TRUE(IsProblem(r, 400, "invalid-idempotency-key")) << r.body;
  r = Call(Post(kEvent, "has space"));
  EXPECT_TRUE(IsProblem(r, 400, "invalid-idempotency-key")) << r.body;
  EXPECT_TRUE(outbox_.stored.empty());
}

TEST_F(LocalApiTest, TokenRateLimitAnswers429WithRetryAfterThenRecovers) {
  TokenConfig t = Token("line-3", "s3");
  t.rate_per_s = 1;
  t.burst = 2;
  api_.tokens = {t, Token("free", "sf")};
  Start();
  EXPECT_EQ(Call(WithToken(Post(), "s3")).status, 202);
  EXPECT_EQ(Call(WithToken(Post(), "s3")).status, 202);
  HttpResponse r = Call(WithToken(Post(), "s3"));
  EXPECT_TRUE(IsProblem(r, 429, "rate-limited")) << r.body;
  EXPECT_EQ(HeaderOf(r, "Retry-After"), "1");
  // Checked before the body is parsed: even garbage is refused with 429.
  EXPECT_EQ(Call(WithToken(Post("{"), "s3")).status, 429);
  // Another token has its own (here unlimited) budget.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Call(WithToken(Post(), "sf")).status, 202);
  clock_.AdvanceMillis(1000);
  EXPECT_EQ(Call(WithToken(Post(), "s3")).status, 202);
  EXPECT_EQ(local_api_->stats().rate_limited.load(), 2u);
}

TEST_F(LocalApiTest, BatchesAreChargedPerEvent) {
  api_.anonymous_rate_per_s = 2;
  api_.anonymous_burst = 4;
  Start();
  std::string batch = "[";
  for (int i = 0; i < 4; ++i) {
    if (i > 0) batch += ',';
    batch += R"({"specversion":"1.0","source":"/s","type":"com.acme.t"})";
  }
  batch += "]";
  ASSERT_EQ(Call(Post(batch, "", "/v1/events:batch")).status, 202);
  HttpResponse r = Call(Post());
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_EQ(HeaderOf(r, "Retry-After"), "1");  // one token at 2/s
  clock_.AdvanceMillis(500);
  EXPECT_EQ(Call(Post()).status, 202);
}

TEST_F(LocalApiTest, AnonymousProducersAreUnlimitedByDefault) {
  Start();
  for (int i = 0; i < 50; ++i) ASSERT_EQ(Call(Post()).status, 202) << i;
}

TEST_F(LocalApiTest, WhileStoppingPostsAndReadinessAre503) {
  Start();
  ready_ = false;
  HttpResponse r = Call(Post());
  EXPECT_TRUE(IsProblem(r, 503, "not-ready")) << r.body;
  EXPECT_EQ(HeaderOf(r, "Retry-After"), "1");
  EXPECT_TRUE(IsProblem(Call(Get("/v1/ready")), 503, "not-ready"));
  EXPECT_TRUE(IsProblem(Call(Get("/v1/dlq", "", "DELETE")), 503, "not-ready"));
  EXPECT_EQ(Call(Get("/v1/health")).status, 200);
  EXPECT_TRUE(outbox_.stored.empty());
  EXPECT_EQ(outbox_.purges, 0);
}

TEST_F(LocalApiTest, MethodNotAllowedNamesTheAllowedOnes) {
  Start();
  HttpResponse r = Call(Get("/v1/events"));
  EXPECT_TRUE(IsProblem(r, 405, "method-not-allowed"));
  EXPECT_EQ(HeaderOf(r, "Allow"), "POST");
  EXPECT_EQ(HeaderOf(Call(Get("/v1/health", "", "POST")), "Allow"), "GET, HEAD");
  EXPECT_EQ(HeaderOf(Call(Get("/v1/dlq", "", "PUT")), "Allow"), "GET, HEAD, DELETE");
  EXPECT_EQ(HeaderOf(Call(Get("/v1/dlq/x:retry", "", "GET")), "Allow"), "POST");
  EXPECT_EQ(HeaderOf(Call(Get("/v1/dlq/x", "", "POST")), "Allow"), "DELETE");
  EXPECT_TRUE(IsProblem(Call(Get("/v1/nothing")), 404, "not-found"));
  EXPECT_TRUE(IsProblem(Call(Get("/v1/dlq/a/b", "", "DELETE")), 404, "not-found"));
}

TEST_F(LocalApiTest, DeadLetterListCarriesEveryFieldAndPages) {
  ws::DeadLetter d;
  d.sequence = 41;
  d.id = "dead-1";
  d.type = "com.acme.t";
  d.topic = "ws/site/node/events/com.acme.t";
  d.priority = Priority::kHigh;
  d.reason = "broker refused the event: not authorized";
  d.accepted_at_us = 1'700'000'000'000'000;
  d.dead_lettered_at_us = 1'700'000'001'000'000;
  d.attempts = 2;
  outbox_.dead_letters = {d};
  Start();
  HttpResponse r = Call(Get("/v1/dlq", "after=40&limit=1"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(outbox_.last_after, 40);
  EXPECT_EQ(outbox_.last_limit, 1u);
  for (const char* want : {"\"sequence\":41", "\"id\":\"dead-1\"", "\"type\":\"com.acme.t\"", "\"priority\":\"high\"",
                           "\"reason\":\"broker refused the event: not authorized\"",
                           "\"accepted_at\":\"2023-11-14T22:13:20.000000Z\"", "\"attempts\":2", "\"next_after\":41"}) {
    EXPECT_NE(r.body.find(want), std::string::npos) << want << " in " << r.body;
  }
  r = Call(Get("/v1/dlq"));
  EXPECT_EQ(outbox_.last_limit, 100u);
  EXPECT_NE(r.body.find("\"next_after\":null"), std::string::npos) << r.body;
}

TEST_F(LocalApiTest, DeadLetterQueryErrorsNameTheParameter) {
  Start();
  for (const auto& [query, field] : std::vector<std::pair<std::string, std::string>>{{"after=-1", "after"},
                                                                                     {"limit=0", "limit"},
                                                                                     {"limit=1001", "limit"},
                                                                                     {"limt=5", "limt"},
                                                                                     {"after=1&after=2", "after"}}) {
    HttpResponse r = Call(Get("/v1/dlq", query));
    EXPECT_TRUE(IsProblem(r, 400, "invalid-query")) << query << ": " << r.body;
    EXPECT_NE(r.body.find("\"field\":\"" + field + "\""), std::string::npos) << query << ": " << r.body;
  }
}

TEST_F(LocalApiTest, DeadLetterRetryAndDeleteAddressTheDecodedId) {
  Start();
  HttpResponse r = Call(Get("/v1/dlq/order%2F7:retry", "", "POST"));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(outbox_.last_id, "order/7");
  r = Call(Get("/v1/dlq/order%2F8", "", "DELETE"));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "{\"deleted\":1}");
  EXPECT_EQ(outbox_.last_id, "order/8");
  r = Call(Get("/v1/dlq", "", "DELETE"));
  EXPECT_EQ(r.body, "{\"deleted\":3}");
  EXPECT_EQ(outbox_.last_id, "");

  outbox_.dlq_status = NotFound("no dead letter \"x\"");
  EXPECT_TRUE(IsProblem(Call(Get("/v1/dlq/x", "", "DELETE")), 404, "dead-letter-not-found"));
  outbox_.dlq_status = Status(StatusCode::kUnimplemented, "not yet");
  EXPECT_TRUE(IsProblem(Call(Get("/v1/dlq")), 501, "not-implemented"));
}

TEST_F(LocalApiTest, DeadLettersNeedAnAdminTokenOnceTokensExist) {
  TokenConfig admin = Token("ops", "s-ops");
  admin.admin = true;
  api_.tokens = {Token("line-3", "s3"), admin};
  Start();
  HttpResponse r = Call(WithToken(Get("/v1/dlq"), "s3"));
  EXPECT_TRUE(IsProblem(r, 403, "admin-required")) << r.body;
  EXPECT_TRUE(IsProblem(Call(Get("/v1/dlq")), 401, "unauthorized"));
  EXPECT_EQ(Call(WithToken(Get("/v1/dlq"), "s-ops")).status, 200);
  EXPECT_EQ(outbox_.purges, 0);
}

TEST_F(LocalApiTest, AuthErrorsAndTypeRules) {
  TokenConfig t = Token("line-3", "s3");
  t.allow_types = {"com.acme.*"};
  api_.tokens = {t};
  Start();
  HttpResponse r = Call(Post());
  EXPECT_TRUE(IsProblem(r, 401, "unauthorized"));
  EXPECT_EQ(HeaderOf(r, "WWW-Authenticate"), "Bearer");
  EXPECT_TRUE(IsProblem(Call(WithToken(Post(), "nope")), 401, "unauthorized"));
  std::string other = R"({"specversion":"1.0","source":"/s","type":"org.other.t"})";
  r = Call(WithToken(Post(other), "s3"));
  EXPECT_TRUE(IsProblem(r, 403, "type-not-allowed")) << r.body;
  EXPECT_NE(r.body.find("\"field\":\"type\""), std::string::npos);
  ASSERT_EQ(Call(WithToken(Post(), "s3")).status, 202);
  ASSERT_EQ(outbox_.stored.size(), 1u);
  Result<Event> stored = DecodeEventRecord(outbox_.stored[0].record, outbox_.stored[0].event.id);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  const std::string* producer = stored->FindAttribute("producer");
  ASSERT_NE(producer, nullptr);
  EXPECT_EQ(*producer, "line-3");
  // Probes stay open.
  EXPECT_EQ(Call(Get("/v1/health")).status, 200);
  EXPECT_EQ(Call(Get("/v1/ready")).status, 200);
}

TEST_F(LocalApiTest, SemanticErrorsAre422WithTheFieldWhileMalformedBodiesStay400) {
  Start();
  // Two events of one batch with one id.
  const std::string twice = R"([{"specversion":"1.0","id":"a","source":"/s","type":"com.acme.t"},
                                {"specversion":"1.0","source":"/s","type":"com.acme.t"},
                                {"specversion":"1.0","id":"a","source":"/s","type":"com.acme.t"}])";
  HttpResponse r = Call(Post(twice, "", "/v1/events:batch"));
  EXPECT_TRUE(IsProblem(r, 422, "duplicate-id-in-batch")) << r.body;
  EXPECT_NE(r.body.find("\"field\":\"[2].id\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("also the id of [0]"), std::string::npos) << r.body;

  // data and data_base64 together, alone and inside a batch.
  const std::string both = R"({"specversion":"1.0","id":"b","source":"/s","type":"com.acme.t",
                               "data":1,"data_base64":"AA=="})";
  r = Call(Post(both));
  EXPECT_TRUE(IsProblem(r, 422, "conflicting-attributes")) << r.body;
  EXPECT_NE(r.body.find("\"field\":\"data\""), std::string::npos) << r.body;
  r = Call(Post("[" + std::string(kEvent) + "," + both + "]", "", "/v1/events:batch"));
  EXPECT_TRUE(IsProblem(r, 422, "conflicting-attributes")) << r.body;
  EXPECT_NE(r.body.find("\"field\":\"[1].data\""), std::string::npos) << r.body;

  // Malformed JSON and bad attributes stay 400.
  EXPECT_TRUE(IsProblem(Call(Post("{\"specversion\":")), 400, "invalid-event"));
  EXPECT_TRUE(IsProblem(Call(Post("[{\"specversion\":", "", "/v1/events:batch")), 400, "invalid-event"));
  EXPECT_TRUE(IsProblem(Call(Post(R"({"specversion":"1.0","id":"c","source":"/s","type":"t","time":"x"})")), 400,
                        "invalid-event"));
  EXPECT_TRUE(outbox_.stored.empty()) << "a refused request writes nothing";

  // Distinct ids (and ids left to the node) in one batch are fine.
  const std::string distinct = R"([{"specversion":"1.0","id":"a","source":"/s","type":"com.acme.t"},
                                   {"specversion":"1.0","source":"/s","type":"com.acme.t"},
                                   {"specversion":"1.0","source":"/s","type":"com.acme.t"},
                                   {"specversion":"1.0","id":"b","source":"/s","type":"com.acme.t"}])";
  EXPECT_EQ(Call(Post(distinct, "", "/v1/events:batch")).status, 202);
  EXPECT_EQ(outbox_.stored.size(), 4u);
}

// A batch of `n` events with ids `prefix`0..n-1.
std::string BatchOf(const std::string& prefix, int n) {
  std::string body = "[";
  for (int i = 0; i < n; ++i) {
    if (i > 0) body += ',';
    body += R"({"specversion":"1.0","id":")" + prefix + std::to_string(i) +
            R"(","source":"/s","type":"com.acme.t","data":1})";
  }
  return body + "]";
}

TEST_F(LocalApiTest, PostsWaitUnparsedWhileTooManyEventsAwaitTheirCommit) {
  outbox_.auto_complete = false;
  Start();
  // Three batches of 1,000 reach the store at once (2,048 events may wait
  // for their commit); the fourth and a single event behind it wait.
  std::vector<std::shared_ptr<std::optional<HttpResponse>>> answers;
  for (int b = 0; b < 4; ++b) {
    answers.push_back(Send(Post(BatchOf("b" + std::to_string(b) + "-", 1000), "", "/v1/events:batch")));
  }
  answers.push_back(Send(Post(kEvent)));
  EXPECT_EQ(outbox_.pending.size(), 3u);
  const HttpResponse metrics = Call(Get("/metrics"));
  EXPECT_NE(metrics.body.find("waystation_api_events_awaiting_commit 3000\n"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("waystation_api_requests_waiting 2\n"), std::string::npos) << metrics.body;
  // One commit makes room for the fourth batch only; the single event
  // stays behind it, in arrival order.
  outbox_.Complete();
  Drain();
  ASSERT_TRUE(answers[0]->has_value());
  EXPECT_EQ((*answers[0])->status, 202);
  EXPECT_EQ(outbox_.pending.size(), 3u);
  EXPECT_FALSE(answers[4]->has_value());
  while (!outbox_.pending.empty()) {
    outbox_.Complete();
    Drain();
  }
  for (const auto& a : answers) {
    ASSERT_TRUE(a->has_value());
    EXPECT_EQ((*a)->status, 202) << (*a)->body;
  }
  EXPECT_EQ(outbox_.stored.size(), 4001u);
  EXPECT_EQ(outbox_.stored.back().event.id, "e-1");
}

}  // namespace
}  // namespace ws
