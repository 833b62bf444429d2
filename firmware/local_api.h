// The local API's routes (DESIGN.md §4): turns HTTP requests into outbox
// appends and status documents. Lives on the loop thread: Handle() and every
// responder call run there; outbox completions are posted back to it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "adapters/http/http_server.h"
#include "adapters/tls_crypto/crypto.h"
#include "core/config.h"
#include "core/outbox.h"
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
  const ApiConfig* api = nullptr;
  std::function<bool()> ready;                // store writable, config loaded
  std::function<std::string()> status_json;   // GET /v1/status
  std::function<std::string()> metrics_text;  // GET /metrics
};

struct LocalApiStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> events_accepted{0};
  std::atomic<uint64_t> requests_rejected{0};
};

class LocalApi {
 public:
  explicit LocalApi(LocalApiContext context);

  void Handle(HttpRequest&& request, HttpResponder respond);

  const LocalApiStats& stats() const { return stats_; }

 private:
  void PostEvent(HttpRequest&& request, HttpResponder respond, const TokenConfig* token);
  void PostBatch(HttpRequest&& request, HttpResponder respond, const TokenConfig* token);
  void Append(std::vector<Event> events, bool batch, HttpResponder respond);
  // nullptr with *problem set when the request may not proceed.
  const TokenConfig* Authenticate(const HttpRequest& request, HttpResponse* problem, bool* denied);
  void Reject(HttpResponder& respond, HttpResponse response);

  LocalApiContext ctx_;
  LocalApiStats stats_;
};

// An RFC 9457 problem document. `slug` names the problem type
// (https://waystation.dev/problems/<slug>); `field` is the offending attribute
// or header, if any.
HttpResponse Problem(int status, std::string_view slug, std::string_view title, std::string_view detail,
                     std::string_view field = {});

}  // namespace ws
