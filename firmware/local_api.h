// The local API's routes (DESIGN.md §4, docs/http-api.md): turns HTTP
// requests into outbox appends, dead-letter operations and status documents,
// and applies the per-producer policy (bearer tokens, allowed types, rate
// limits, Idempotency-Key). Lives on the loop thread: Handle() and every
// responder call run there; outbox completions are posted back to it.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/http/http_server.h"
#include "adapters/tls/tls_server.h"
#include "adapters/tls_crypto/crypto.h"
#include "core/config.h"
#include "core/idempotency_cache.h"
#include "core/outbox.h"
#include "core/rate_limiter.h"
#include "core/routing.h"
#include "platform/clock.h"
#include "platform/event_loop.h"

namespace ws {

struct LocalApiContext {
  EventLoop* loop = nullptr;
  const Clock* clock = nullptr;
  Outbox* outbox = nullptr;
  const Router* router = nullptr;
  RandomSource* random = nullptr;
  const ApiConfig* api = nullptr;             // read once, at construction, for buckets and the cache
  std::function<bool()> ready;                // store writable, config loaded, not stopping
  std::function<std::string()> status_json;   // GET /v1/status
  std::function<std::string()> metrics_text;  // GET /metrics
};

struct LocalApiStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> events_accepted{0};
  std::atomic<uint64_t> requests_rejected{0};   // answered with an error status (includes the two below)
  std::atomic<uint64_t> rate_limited{0};        // 429
  std::atomic<uint64_t> idempotent_replays{0};  // answered from the Idempotency-Key cache
};

class LocalApi {
 public:
  explicit LocalApi(LocalApiContext context);
  ~LocalApi();
  LocalApi(const LocalApi&) = delete;
  LocalApi& operator=(const LocalApi&) = delete;

  void Handle(HttpRequest&& request, HttpResponder respond);

  // HTTPS: loads the files of every api.listen entry with "tls" and puts a
  // TLS transport for it into `options->transports` (parallel to
  // `options->listen`, which must be api.listen). Errors name the key
  // ("api.listen[1].tls.key_file: ..."). Call once, before the server is
  // created.
  Status ConfigureTls(HttpServerOptions* options);

  // SIGHUP: every TLS listener reads its certificate, key and client CAs
  // again; new connections get the new ones, open connections keep theirs.
  // Bad files keep the old credentials in use: the error is logged and
  // counted, and tls_reload_failed() stays true until a reload succeeds.
  void ReloadTls();
  bool tls_reload_failed() const;

  const LocalApiStats& stats() const { return stats_; }

 private:
  // The authenticated caller: a configured token, or anonymous (no tokens
  // configured; only local listeners exist then).
  struct Caller {
    const TokenConfig* token = nullptr;
    TokenBucket* bucket = nullptr;  // nullptr: not limited
  };

  void PostEvent(HttpRequest&& request, HttpResponder respond, const Caller& caller);
  void PostBatch(HttpRequest&& request, HttpResponder respond, const Caller& caller);
  void Append(std::vector<Event> events, bool batch, HttpResponder respond);
  // On the loop, after the answer for `events` appended events was written:
  // lets parked requests go on while there is room.
  void Answered(size_t events);
  void ListDeadLetters(const HttpRequest& request, HttpResponder respond);
  void RetryDeadLetter(std::string id, HttpResponder respond);
  void PurgeDeadLetters(std::string id, HttpResponder respond);
  // Resolves the caller, or answers 401 and returns nullopt.
  std::optional<Caller> Authenticate(const HttpRequest& request, HttpResponder& respond);
  // Wraps `respond` so that the answer is remembered (2xx) or the key freed
  // (anything else); answers the request itself and returns false when the
  // key was seen before (replay, 409, 422) or is malformed (400).
  bool ClaimIdempotencyKey(const HttpRequest& request, const Caller& caller, HttpResponder* respond);
  void Reject(HttpResponder& respond, HttpResponse response);

  void AppendTlsMetrics(std::string* out) const;

  struct TlsListener {
    size_t index;         // in api.listen
    std::string address;  // as configured
    std::shared_ptr<TlsServer> server;
  };

  LocalApiContext ctx_;
  LocalApiStats stats_;
  std::vector<TlsListener> tls_listeners_;
  std::vector<TokenBucket> token_buckets_;  // parallel to ctx_.api->tokens
  std::optional<TokenBucket> anonymous_bucket_;
  // Shared with the responders that finish a claimed key, which may run
  // after an outbox commit; they hold it weakly.
  std::shared_ptr<IdempotencyCache> idempotency_;

  // Events handed to the store and not answered yet, and the POSTs that
  // wait, unparsed, until that number is below kMaxEventsInFlight (loop
  // thread only). A request waiting here holds only its body, less than
  // the same events parsed and waiting for their commit.
  size_t events_in_flight_ = 0;
  struct Parked {
    HttpRequest request;
    HttpResponder respond;
    Caller caller;
    bool batch = false;
  };
  std::deque<Parked> parked_;
};

// check-config: loads the certificate, key and client CA files of every TLS
// listener in `api` the way the node will, appending one error per problem
// ("api.listen[1].tls.key_file: ... does not belong to the certificate ...").
// Entries whose file names are missing are left to ValidateConfig. True if
// there were none.
bool CheckLocalApiTls(const ApiConfig& api, std::vector<std::string>* errors);

// An RFC 9457 problem document. `slug` names the problem type
// (https://waystation.dev/problems/<slug>); `field` is the offending attribute
// or header, if any.
HttpResponse Problem(int status, std::string_view slug, std::string_view title, std::string_view detail,
                     std::string_view field = {});

}  // namespace ws
