// The local API's HTTP/1.1 server: our own connection loop on the platform
// EventLoop, with requests parsed by libhttp-parser. It knows nothing of
// events or the outbox: it hands complete requests to one handler and writes
// the responses back, in request order per connection (pipelining).
//
// Threads: Create, Close, the destructor and every callback run on the loop
// thread (or before Run() starts / after it returned). A handler may answer
// later (after an outbox commit) by calling its Responder from the loop
// thread; a Responder whose connection or server has gone is a no-op, and so
// is a second call of the same Responder. Close may be called from inside a
// handler; the destructor may not. Stats() and BoundAddresses() may be called
// from any thread.
//
// Errors the server detects itself (malformed request, limits, too many
// connections, timeouts) are answered with RFC 9457 problem+json bodies and
// never reach the handler.
//
// A listener may have a TransportFactory (TLS from adapters/tls): its
// connections then start with the transport's handshake, which must finish
// within header_timeout_ms. The server itself knows no TLS library.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "platform/event_loop.h"
#include "platform/status.h"
#include "platform/transport.h"

namespace ws {

struct HttpRequest {
  std::string method;                                        // "GET", "POST", ...
  std::string path;                                          // without the query, percent-decoding not applied
  std::string query;                                         // after '?', may be empty
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;                                          // de-chunked
  std::string peer;                                          // "127.0.0.1:53210", "[::1]:4000" or "unix"
  bool peer_is_local = false;                                // loopback or Unix socket

  // nullptr if absent; `name` must be lowercase.
  const std::string* Header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  std::string body;
};

using HttpResponder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(HttpRequest&& request, HttpResponder respond)>;

struct HttpServerOptions {
  std::vector<std::string> listen;              // "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0", "unix:var/api.sock"
  size_t max_header_bytes = size_t{16} * 1024;  // 431 beyond
  size_t max_body_bytes = size_t{1024} * 1024;  // 413 beyond
  size_t max_url_bytes = 4096;                  // 414 beyond
  uint32_t max_connections = 256;               // further connections are accepted and closed with 503
  int64_t idle_timeout_ms = 60'000;             // keep-alive connection with no request
  int64_t header_timeout_ms = 10'000;           // a request's headers must arrive within this (slowloris)
  int64_t body_timeout_ms = 30'000;             // ... and its body within this
  uint32_t max_pipelined = 32;                  // requests parsed ahead of their responses
  // Parallel to `listen`: the transport of each listener's connections. A
  // missing or null entry is a plain socket. Over max_connections, a
  // listener with a transport closes new connections unanswered (its
  // clients could not read a plain 503).
  std::vector<std::shared_ptr<TransportFactory>> transports;
};

struct HttpServerStats {
  uint64_t connections_accepted = 0;  // admitted (served) connections
  uint64_t connections_open = 0;
  uint64_t connections_rejected = 0;  // turned away with 503 (max_connections)
  uint64_t requests = 0;              // complete requests handed to the handler
  uint64_t timeouts = 0;              // header, body or write timeouts (not idle closes)
  uint64_t parse_errors = 0;          // malformed requests (400)
  uint64_t limit_errors = 0;          // 411, 413, 414, 431
  uint64_t responses = 0;             // responses queued, handler's and server's
  uint64_t handshake_failures = 0;    // transport handshakes that failed (a timeout counts in `timeouts`)
};

class HttpServer {
 public:
  // Binds every listen address (a Unix socket path is unlinked first and
  // created with mode 0660) and starts accepting. Fails without binding
  // anything if one address is bad or taken.
  static Result<std::unique_ptr<HttpServer>> Create(EventLoop* loop, HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The addresses actually bound, in `listen` order ("127.0.0.1:41234" when
  // port 0 was asked for; "unix:PATH" for Unix sockets).
  std::vector<std::string> BoundAddresses() const;

  // Stops accepting and closes every connection (pending responders become
  // no-ops).
  void Close();

  HttpServerStats Stats() const;

 private:
  class Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Standard reason phrase ("Accepted" for 202); "Unknown" for codes it does
// not know.
std::string_view HttpReasonPhrase(int status);

// An RFC 9457 problem+json response:
// {"type":"https://waystation.dev/problems/<slug>","title":<reason phrase>,
//  "status":<status>,"detail":<detail>}. Any thread.
HttpResponse ProblemResponse(int status, std::string_view slug, std::string_view detail);

}  // namespace ws
