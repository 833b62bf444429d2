#include "adapters/http/http_server.h"

#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "adapters/http/listen_socket.h"
#include "adapters/http/response_format.h"
#include "platform/clock.h"
#include "platform/log.h"
#include "platform/unique_fd.h"

namespace ws {
namespace {

using http_internal::ConnectionHeader;
using http_internal::ListenSocket;

constexpr std::string_view kLog = "http";
constexpr size_t kReadChunk = size_t{64} * 1024;
// Above this much unsent output a connection stops reading requests: a
// client that does not read its answers cannot make us buffer without bound.
constexpr size_t kOutputHighWater = size_t{256} * 1024;
// Buffers that grew beyond this for one large message are released once
// drained, so 256 idle keep-alive connections stay small.
constexpr size_t kKeepCapacity = size_t{64} * 1024;
constexpr int kListenBacklog = 511;
constexpr int kMaxAcceptsPerWake = 64;
constexpr int kMaxReadsPerWake = 4;
// When accept4 runs out of descriptors or memory, the pending connection
// stays in the backlog and a level-triggered listener would spin: pause.
constexpr int64_t kAcceptPauseMs = 100;
// After the final response (error or Connection: close) the rest of what the
// client sends is read and dropped for a while: closing with unread input
// makes the kernel send RST, which can destroy the response in flight.
constexpr int64_t kLingerMs = 2000;
constexpr size_t kLingerMaxBytes = size_t{1024} * 1024;
// Connections over max_connections that are still being told 503; beyond
// this many they are closed without an answer.
constexpr uint32_t kMaxRejecting = 64;
constexpr size_t kHeaderReserve = 16;

constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";

int64_t NowMs() { return SystemClock().MonotonicMillis(); }

// Single writer (the loop thread), any reader: no read-modify-write needed.
class Counter {
 public:
  void Add(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void Sub(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  uint64_t Get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

void AppendLower(std::string* out, const char* at, size_t len) {
  size_t base = out->size();
  out->append(at, len);
  for (size_t i = base; i < out->size(); ++i) {
    char& ch = (*out)[i];
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
}

bool EqualsIgnoreCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char ch = a[i];
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    if (ch != lower[i]) return false;
  }
  return true;
}

void ReleaseIfLarge(std::string* s) {
  if (s->capacity() > kKeepCapacity) std::string().swap(*s);
}

enum class Phase : uint8_t {
  kIdle,     // keep-alive, no request started: idle_timeout_ms
  kHeaders,  // first byte of a request seen: header_timeout_ms
  kBody,     // headers complete, body expected: body_timeout_ms
  kWaiting,  // every received request is with the handler: no read deadline
  kLinger,   // final response sent, output shut down, draining input
  // The transport's handshake (TLS) is not complete: header_timeout_ms.
  kHandshake,
};

struct ResponseSlot {
  bool ready = false;
  bool head_request = false;
  ConnectionHeader connection = ConnectionHeader::kNone;
  std::string bytes;  // the serialized response, when answered out of turn
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(EventLoop* loop, HttpServerOptions options, HttpHandler handler);
  ~Impl();

  Status Start();
  void Close();
  HttpServerStats Stats() const;
  const std::vector<std::string>& bound() const { return bound_; }

 private:
  struct Connection {
    Impl* server = nullptr;
    uint64_t id = 0;
    UniqueFd fd;
    // Declared after `fd`: destroyed before the descriptor is closed.
    std::unique_ptr<Transport> transport;
    bool handshaking = false;
    TransportWait handshake_wait = TransportWait::kReadable;
    bool read_wants_write = false;  // the transport's Read waits for writability
    bool write_wants_read = false;  // the transport's Write waits for readability
    std::string peer;
    bool peer_is_local = false;
    bool admitted = false;  // counts toward max_connections; false: told 503

    http_parser parser{};
    HttpRequest request;  // the one being parsed
    size_t header_bytes = 0;
    bool header_value_last = false;
    bool in_message = false;
    bool message_ready = false;
    bool message_keep_alive = true;
    bool message_http10 = false;
    bool message_head = false;
    int error_status = 0;  // set by a parser callback that stopped the parse
    std::string error_slug;
    std::string error_detail;

    // Bytes read but not yet parsed because the connection hit backpressure.
    std::string held;
    size_t held_off = 0;

    std::vector<ResponseSlot> slots;  // ring, indexed by sequence number
    uint64_t head_seq = 0;            // oldest request not yet answered in order
    uint64_t next_seq = 0;
    std::string out;
    size_t out_off = 0;

    bool reading = true;  // still parsing requests
    bool peer_eof = false;
    bool close_when_flushed = false;
    Phase phase = Phase::kIdle;
    int64_t read_deadline = 0;   // 0: none
    int64_t write_deadline = 0;  // 0: none
    uint32_t interest = 0;
    size_t lingered_bytes = 0;

    int busy = 0;  // entry points on the stack; destruction waits for 0
    bool doomed = false;
    bool flush_wanted = false;

    uint64_t pending() const { return next_seq - head_seq; }
    bool has_held() const { return held_off < held.size(); }
    bool has_output() const { return out_off < out.size(); }
    ResponseSlot& slot(uint64_t seq) { return slots[static_cast<size_t>(seq % slots.size())]; }
  };

  // Keeps a connection alive while code for it is on the stack; the
  // outermost guard settles it (flush, resume parsing, interest, destroy).
  class ConnGuard {
   public:
    ConnGuard(Impl* s, Connection* c) : s_(s), c_(c) { ++c_->busy; }
    ~ConnGuard() {
      if (--c_->busy == 0) s_->Settle(c_);
    }
    ConnGuard(const ConnGuard&) = delete;
    ConnGuard& operator=(const ConnGuard&) = delete;

   private:
    Impl* s_;
    Connection* c_;
  };

  // Outlives the server when a Responder is kept: `impl` becomes null.
  struct Link {
    Impl* impl;
  };

  struct Responder {
    std::shared_ptr<Link> link;
    uint64_t connection_id;
    uint64_t seq;
    void operator()(const HttpResponse& response) const {
      if (link->impl != nullptr) link->impl->Respond(connection_id, seq, response);
    }
  };

  struct TableEntry {
    uint32_t generation = 0;
    std::unique_ptr<Connection> conn;
  };

  // Parser callbacks.
  static int OnMessageBegin(http_parser* p);
  static int OnUrl(http_parser* p, const char* at, size_t len);
  static int OnHeaderField(http_parser* p, const char* at, size_t len);
  static int OnHeaderValue(http_parser* p, const char* at, size_t len);
  static int OnHeadersComplete(http_parser* p);
  static int OnBody(http_parser* p, const char* at, size_t len);
  static int OnMessageComplete(http_parser* p);
  static const http_parser_settings kParserSettings;

  static int StopParse(Connection* c, int status, std::string_view slug, std::string detail);

  void OnAcceptable(size_t listener);
  void PauseAccepting();
  void Admit(UniqueFd fd, const sockaddr_storage& peer, size_t listener);
  Connection* Lookup(uint64_t id);
  void Destroy(Connection* c);
  void Doom(Connection* c);

  void OnConnectionEvent(uint64_t id, uint32_t events);
  void ContinueHandshake(Connection* c);
  void OnReadable(Connection* c);
  void DrainLinger(Connection* c);
  void OnPeerEof(Connection* c);
  size_t Parse(Connection* c, const char* data, size_t len);
  void ParseFailed(Connection* c, http_errno err);
  void Dispatch(Connection* c);
  void Respond(uint64_t id, uint64_t seq, const HttpResponse& response);
  void QueueServerResponse(Connection* c, const HttpResponse& response);
  void Fill(Connection* c, uint64_t seq, const HttpResponse& response);
  void Flush(Connection* c);
  void StartLinger(Connection* c);
  void Settle(Connection* c);
  void UpdateInterest(Connection* c);
  bool Backpressured(const Connection* c) const;
  void SetPhase(Connection* c, Phase phase);
  TransportFactory* TransportOf(size_t listener) const {
    return listener < opts_.transports.size() ? opts_.transports[listener].get() : nullptr;
  }

  void ArmSweep();
  void Sweep();
  void CheckDeadlines(Connection* c, int64_t now);

  EventLoop* loop_;
  HttpServerOptions opts_;
  HttpHandler handler_;
  std::shared_ptr<Link> link_;
  std::vector<ListenSocket> listeners_;
  std::vector<std::string> bound_;
  std::vector<TableEntry> table_;
  std::vector<uint32_t> free_slots_;
  std::vector<char> scratch_;
  uint32_t open_ = 0;
  uint32_t rejecting_ = 0;
  int64_t sweep_ms_ = 1000;
  EventLoop::TimerId sweep_timer_ = 0;
  EventLoop::TimerId accept_timer_ = 0;
  bool closed_ = false;

  Counter accepted_, open_count_, rejected_, requests_, timeouts_, parse_errors_, limit_errors_, responses_,
      handshake_failures_;
};

const http_parser_settings HttpServer::Impl::kParserSettings = {
    /*on_message_begin=*/&HttpServer::Impl::OnMessageBegin,
    /*on_url=*/&HttpServer::Impl::OnUrl,
    /*on_status=*/nullptr,
    /*on_header_field=*/&HttpServer::Impl::OnHeaderField,
    /*on_header_value=*/&HttpServer::Impl::OnHeaderValue,
    /*on_headers_complete=*/&HttpServer::Impl::OnHeadersComplete,
    /*on_body=*/&HttpServer::Impl::OnBody,
    /*on_message_complete=*/&HttpServer::Impl::OnMessageComplete,
    /*on_chunk_header=*/nullptr,
    /*on_chunk_complete=*/nullptr,
};

HttpServer::Impl::Impl(EventLoop* loop, HttpServerOptions options, HttpHandler handler)
    : loop_(loop),
      opts_(std::move(options)),
      handler_(std::move(handler)),
      link_(std::make_shared<Link>(Link{this})),
      scratch_(kReadChunk) {
  // Deadlines are checked by one sweep timer per server rather than one timer
  // per connection and phase: a request then costs no timer bookkeeping, and
  // a deadline fires late by at most a quarter of the shortest timeout (and
  // at most a second).
  int64_t shortest = std::min({opts_.idle_timeout_ms, opts_.header_timeout_ms, opts_.body_timeout_ms});
  sweep_ms_ = std::clamp<int64_t>(shortest / 4, 10, 1000);
}

HttpServer::Impl::~Impl() {
  Close();
  link_->impl = nullptr;
}

Status HttpServer::Impl::Start() {
  std::vector<ListenSocket> sockets;
  sockets.reserve(opts_.listen.size());
  for (const std::string& address : opts_.listen) {
    Result<ListenSocket> s = ListenSocket::Open(address, kListenBacklog);
    if (!s.ok()) return s.status();  // `sockets` unbinds what was bound so far
    sockets.push_back(std::move(s).value());
  }
  for (size_t i = 0; i < sockets.size(); ++i) {
    Status s = loop_->AddFd(sockets[i].fd(), EventLoop::kReadable, [this, i](uint32_t) { OnAcceptable(i); });
    if (!s.ok()) {
      for (size_t j = 0; j < i; ++j) loop_->RemoveFd(sockets[j].fd());
      return s.WithContext("watch " + sockets[i].bound_address());
    }
  }
  listeners_ = std::move(sockets);
  for (size_t i = 0; i < listeners_.size(); ++i) {
    const TransportFactory* factory = TransportOf(i);
    bound_.push_back(listeners_[i].bound_address());
    WS_LOG_INFO(kLog, "listening",
                {{"address", listeners_[i].bound_address()}, {"transport", factory ? factory->Name() : "plain"}});
  }
  return Status::Ok();
}

void HttpServer::Impl::Close() {
  if (closed_) return;
  closed_ = true;
  for (const ListenSocket& l : listeners_) loop_->RemoveFd(l.fd());
  listeners_.clear();
  if (sweep_timer_ != 0) loop_->CancelTimer(sweep_timer_);
  if (accept_timer_ != 0) loop_->CancelTimer(accept_timer_);
  sweep_timer_ = accept_timer_ = 0;
  for (TableEntry& e : table_) {
    Connection* c = e.conn.get();
    if (c == nullptr) continue;
    Doom(c);
    // A connection whose handler called Close is destroyed when its guard
    // unwinds.
    if (c->busy == 0) Destroy(c);
  }
}

HttpServerStats HttpServer::Impl::Stats() const {
  HttpServerStats s;
  s.connections_accepted = accepted_.Get();
  s.connections_open = open_count_.Get();
  s.connections_rejected = rejected_.Get();
  s.requests = requests_.Get();
  s.timeouts = timeouts_.Get();
  s.parse_errors = parse_errors_.Get();
  s.limit_errors = limit_errors_.Get();
  s.responses = responses_.Get();
  s.handshake_failures = handshake_failures_.Get();
  return s;
}

// ---- accepting ----

void HttpServer::Impl::OnAcceptable(size_t listener) {
  if (closed_ || listener >= listeners_.size()) return;
  int lfd = listeners_[listener].fd();
  for (int i = 0; i < kMaxAcceptsPerWake; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      WS_LOG_WARN(kLog, "accept failed; pausing accepts",
                  {{"address", listeners_[listener].bound_address()}, {"error", ErrnoStatus(err, "accept").message()}});
      PauseAccepting();
      return;
    }
    Admit(UniqueFd(fd), peer, listener);
    if (closed_) return;
  }
}

void HttpServer::Impl::PauseAccepting() {
  if (accept_timer_ != 0) return;
  for (const ListenSocket& l : listeners_) {
    Status s = loop_->ModifyFd(l.fd(), 0);
    if (!s.ok()) WS_LOG_ERROR(kLog, "cannot pause a listener", {{"error", s.ToString()}});
  }
  accept_timer_ = loop_->AddTimer(kAcceptPauseMs, [this] {
    accept_timer_ = 0;
    for (const ListenSocket& l : listeners_) {
      Status s = loop_->ModifyFd(l.fd(), EventLoop::kReadable);
      if (!s.ok()) WS_LOG_ERROR(kLog, "cannot resume a listener", {{"error", s.ToString()}});
    }
  });
}

void HttpServer::Impl::Admit(UniqueFd fd, const sockaddr_storage& peer, size_t listener) {
  TransportFactory* factory = TransportOf(listener);
  const bool admitted = open_ < opts_.max_connections;
  if (!admitted) {
    rejected_.Add();
    // One line per hundred: a flood must not turn into a flood of logs.
    if (rejected_.Get() % 100 == 1) {
      WS_LOG_WARN(
          kLog, "connections refused: too many connections",
          {{"peer", http_internal::FormatSocketAddress(peer)}, {"refused_total", std::to_string(rejected_.Get())}});
    }
    // Closed unanswered when we are flooded, or when the client expects a
    // handshake: a plain 503 would be noise to it, and a handshake to tell it
    // costs what the flood is made of.
    if (rejecting_ >= kMaxRejecting || factory != nullptr) return;
  }
  if (peer.ss_family == AF_INET || peer.ss_family == AF_INET6) {
    // Responses go out in one write each; Nagle would only hold back the
    // last segment of a large one behind the client's delayed ACK.
    int one = 1;
    if (setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
      WS_LOG_DEBUG(kLog, "TCP_NODELAY failed", {{"error", ErrnoStatus(errno, "setsockopt").message()}});
    }
  }

  std::unique_ptr<Transport> transport;
  if (factory != nullptr && admitted) {
    Result<std::unique_ptr<Transport>> t = factory->Accept(fd.get());
    if (!t.ok()) {
      WS_LOG_WARN(kLog, "cannot set up a connection",
                  {{"peer", http_internal::FormatSocketAddress(peer)},
                   {"transport", factory->Name()},
                   {"error", t.status().ToString()}});
      return;
    }
    transport = std::move(t).value();
  } else {
    transport = MakeSocketTransport(fd.get());
  }

  uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = static_cast<uint32_t>(table_.size());
    table_.emplace_back();
  }
  TableEntry& entry = table_[index];
  entry.conn = std::make_unique<Connection>();
  Connection* c = entry.conn.get();
  c->server = this;
  c->id = (uint64_t{entry.generation} << 32) | index;
  c->fd = std::move(fd);
  c->transport = std::move(transport);
  c->handshaking = factory != nullptr && admitted;
  c->peer = http_internal::FormatSocketAddress(peer);
  c->peer_is_local = http_internal::IsLocalSocketAddress(peer);
  c->admitted = admitted;

  const uint64_t id = c->id;
  Status s =
      loop_->AddFd(c->fd.get(), EventLoop::kReadable, [this, id](uint32_t events) { OnConnectionEvent(id, events); });
  if (!s.ok()) {
    WS_LOG_ERROR(kLog, "cannot watch a new connection", {{"peer", c->peer}, {"error", s.ToString()}});
    entry.conn.reset();
    ++entry.generation;
    free_slots_.push_back(index);
    return;
  }
  c->interest = EventLoop::kReadable;

  if (admitted) {
    ++open_;
    accepted_.Add();
    open_count_.Add();
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->slots.resize(std::max<uint32_t>(1, opts_.max_pipelined));
    SetPhase(c, c->handshaking ? Phase::kHandshake : Phase::kIdle);
    WS_LOG_DEBUG(kLog, "connection accepted", {{"peer", c->peer}});
  } else {
    ++rejecting_;
    c->reading = false;
    c->slots.resize(1);
    HttpResponse r = ProblemResponse(
        503, "too-many-connections",
        "the server already serves " + std::to_string(opts_.max_connections) + " connections; retry later");
    r.headers.emplace_back("Retry-After", "1");
    ConnGuard guard(this, c);
    QueueServerResponse(c, r);
  }
  ArmSweep();
}

HttpServer::Impl::Connection* HttpServer::Impl::Lookup(uint64_t id) {
  const auto index = static_cast<uint32_t>(id & 0xffffffffu);
  const auto generation = static_cast<uint32_t>(id >> 32);
  if (index >= table_.size()) return nullptr;
  TableEntry& e = table_[index];
  if (e.generation != generation || e.conn == nullptr) return nullptr;
  return e.conn.get();
}

void HttpServer::Impl::Doom(Connection* c) {
  c->doomed = true;
  c->reading = false;
}

void HttpServer::Impl::Destroy(Connection* c) {
  loop_->RemoveFd(c->fd.get());
  if (c->admitted) {
    --open_;
    open_count_.Sub();
  } else {
    --rejecting_;
  }
  const auto index = static_cast<uint32_t>(c->id & 0xffffffffu);
  WS_LOG_DEBUG(kLog, "connection closed", {{"peer", c->peer}});
  TableEntry& e = table_[index];
  ++e.generation;  // outstanding Responders for it now miss
  e.conn.reset();  // closes the descriptor
  free_slots_.push_back(index);
}

// ---- reading and parsing ----

void HttpServer::Impl::OnConnectionEvent(uint64_t id, uint32_t events) {
  Connection* c = Lookup(id);
  if (c == nullptr || c->doomed) return;
  ConnGuard guard(this, c);
  if ((events & (EventLoop::kError | EventLoop::kHangup)) != 0) {
    // Both directions are gone (RST, or FIN after our own shutdown).
    Doom(c);
    return;
  }
  bool readable = (events & EventLoop::kReadable) != 0;
  const bool writable = (events & EventLoop::kWritable) != 0;
  if (c->handshaking) {
    ContinueHandshake(c);
    if (c->handshaking || c->doomed) return;
    // Done: a request may have come right behind the handshake.
    readable = true;
  }
  if (writable && c->read_wants_write) {
    c->read_wants_write = false;
    readable = true;
  }
  if (readable && c->write_wants_read) {
    c->write_wants_read = false;
    c->flush_wanted = true;
  }
  if (readable) OnReadable(c);
  if (writable && !c->doomed) c->flush_wanted = true;
}

void HttpServer::Impl::ContinueHandshake(Connection* c) {
  Result<TransportWait> r = c->transport->Handshake();
  if (r.ok()) {
    c->handshake_wait = *r;
    if (*r == TransportWait::kNone) {
      c->handshaking = false;
      SetPhase(c, Phase::kIdle);
      WS_LOG_DEBUG(kLog, "handshake complete", {{"peer", c->peer}});
    }
    return;
  }
  handshake_failures_.Add();
  if (c->transport->PeerSpokePlainHttp()) {
    // Someone forgot "https://": tell them in words they can read. Nothing
    // was written yet, so the socket still carries plain HTTP.
    WS_LOG_DEBUG(kLog, "plain HTTP on a TLS listener", {{"peer", c->peer}});
    c->handshaking = false;
    c->transport = MakeSocketTransport(c->fd.get());
    QueueServerResponse(c,
                        ProblemResponse(400, "https-required", "this address serves HTTPS only; use an https:// URL"));
    return;
  }
  // The first failure and then one line per hundred: whoever can connect
  // must not be able to flood the log.
  const uint64_t failures = handshake_failures_.Get();
  if (failures % 100 == 1) {
    WS_LOG_WARN(kLog, "handshake failed",
                {{"peer", c->peer}, {"error", r.status().message()}, {"failures_total", std::to_string(failures)}});
  } else {
    WS_LOG_DEBUG(kLog, "handshake failed", {{"peer", c->peer}, {"error", r.status().message()}});
  }
  // Closed like after a final answer: the alert the transport sent (e.g.
  // "unknown CA") reaches the client instead of being lost to a reset.
  c->handshaking = false;
  StartLinger(c);
}

bool HttpServer::Impl::Backpressured(const Connection* c) const {
  return c->pending() >= c->slots.size() || c->out.size() - c->out_off > kOutputHighWater;
}

void HttpServer::Impl::OnReadable(Connection* c) {
  if (c->phase == Phase::kLinger) {
    DrainLinger(c);
    return;
  }
  for (int i = 0; i < kMaxReadsPerWake; ++i) {
    if (!c->reading || c->peer_eof || c->has_held() || Backpressured(c) || c->doomed) return;
    Result<TransportIo> r = c->transport->Read(scratch_.data(), scratch_.size());
    if (!r.ok()) {
      // ECONNRESET, ETIMEDOUT, a TLS alert...: the peer is gone, nobody to answer.
      WS_LOG_DEBUG(kLog, "read failed", {{"peer", c->peer}, {"error", r.status().message()}});
      Doom(c);
      return;
    }
    if (r->bytes > 0) {
      const size_t got = r->bytes;
      size_t used = Parse(c, scratch_.data(), got);
      if (used < got && c->reading && !c->doomed) c->held.assign(scratch_.data() + used, got - used);
      // A short read most likely drained the socket; what the transport
      // holds already would never make it readable again.
      if (got < scratch_.size() && !c->transport->HasBufferedInput()) return;
      continue;
    }
    if (r->eof) {
      OnPeerEof(c);
      return;
    }
    c->read_wants_write = r->wait == TransportWait::kWritable;
    return;
  }
}

void HttpServer::Impl::DrainLinger(Connection* c) {
  for (;;) {
    ssize_t n = ::recv(c->fd.get(), scratch_.data(), scratch_.size(), 0);
    if (n > 0) {
      c->lingered_bytes += static_cast<size_t>(n);
      if (c->lingered_bytes > kLingerMaxBytes) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // EOF or error: the client has what we sent
  }
  Doom(c);
}

void HttpServer::Impl::OnPeerEof(Connection* c) {
  c->peer_eof = true;
  // A half-closed client still gets the answers to what it sent completely;
  // a request cut short is dropped.
  if (c->in_message && !c->has_held()) Doom(c);
}

// Parses until the input is used up, the connection stops reading, or
// backpressure stops it; returns how many bytes were used (the caller holds
// the rest back). Bytes after a final request or an error count as used.
size_t HttpServer::Impl::Parse(Connection* c, const char* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    if (!c->reading || c->doomed) return len;
    if (Backpressured(c)) return done;
    size_t n = http_parser_execute(&c->parser, &kParserSettings, data + done, len - done);
    done += n;
    const auto err = static_cast<http_errno>(c->parser.http_errno);
    if (err == HPE_PAUSED) {
      http_parser_pause(&c->parser, 0);
      if (c->message_ready) Dispatch(c);
      continue;
    }
    if (err != HPE_OK) {
      ParseFailed(c, err);
      return len;
    }
    if (n == 0) return len;  // cannot happen with HPE_OK; never spin on it
  }
  return done;
}

int HttpServer::Impl::StopParse(Connection* c, int status, std::string_view slug, std::string detail) {
  c->error_status = status;
  c->error_slug = std::string(slug);
  c->error_detail = std::move(detail);
  // Not 1 or 2: from on_headers_complete those mean "no body" / "upgrade".
  return -1;
}

void HttpServer::Impl::ParseFailed(Connection* c, http_errno err) {
  HttpResponse r;
  if (c->error_status != 0) {
    (c->error_status == 400 ? parse_errors_ : limit_errors_).Add();
    r = ProblemResponse(c->error_status, c->error_slug, c->error_detail);
  } else if (err == HPE_HEADER_OVERFLOW) {
    limit_errors_.Add();
    r = ProblemResponse(431, "headers-too-large", "the request headers are too large");
  } else {
    parse_errors_.Add();
    r = ProblemResponse(400, "malformed-request",
                        std::string("cannot parse the request: ") + http_errno_description(err));
  }
  WS_LOG_DEBUG(kLog, "request rejected", {{"peer", c->peer}, {"status", std::to_string(r.status)}});
  c->in_message = false;
  c->reading = false;
  QueueServerResponse(c, r);
}

int HttpServer::Impl::OnMessageBegin(http_parser* p) {
  auto* c = static_cast<Connection*>(p->data);
  HttpRequest& r = c->request;
  // The previous request was moved out; clear() makes the moved-from
  // members definite again.
  r.method.clear();
  r.path.clear();
  r.query.clear();
  r.headers.clear();
  r.headers.reserve(kHeaderReserve);
  r.body.clear();
  c->header_bytes = 0;
  c->header_value_last = false;
  c->in_message = true;
  c->server->SetPhase(c, Phase::kHeaders);
  return 0;
}

int HttpServer::Impl::OnUrl(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<Connection*>(p->data);
  const size_t limit = c->server->opts_.max_url_bytes;
  if (c->request.path.size() + len > limit) {
    return StopParse(c, 414, "url-too-long", "the request target exceeds " + std::to_string(limit) + " bytes");
  }
  c->request.path.append(at, len);
  return 0;
}

int HttpServer::Impl::OnHeaderField(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<Connection*>(p->data);
  auto& headers = c->request.headers;
  if (headers.empty() || c->header_value_last) {
    headers.emplace_back();
    c->header_bytes += 4;  // ": " and CRLF
  }
  c->header_value_last = false;
  c->header_bytes += len;
  const size_t limit = c->server->opts_.max_header_bytes;
  if (c->header_bytes > limit) {
    return StopParse(c, 431, "headers-too-large", "the request headers exceed " + std::to_string(limit) + " bytes");
  }
  AppendLower(&headers.back().first, at, len);
  return 0;
}

int HttpServer::Impl::OnHeaderValue(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<Connection*>(p->data);
  c->header_value_last = true;
  c->header_bytes += len;
  const size_t limit = c->server->opts_.max_header_bytes;
  if (c->header_bytes > limit) {
    return StopParse(c, 431, "headers-too-large", "the request headers exceed " + std::to_string(limit) + " bytes");
  }
  c->request.headers.back().second.append(at, len);
  return 0;
}

int HttpServer::Impl::OnHeadersComplete(http_parser* p) {
  auto* c = static_cast<Connection*>(p->data);
  Impl* s = c->server;
  HttpRequest& r = c->request;
  const auto method = static_cast<http_method>(p->method);
  r.method = http_method_str(method);

  // Origin form ("/v1/events?x=1") is what clients send; the absolute form
  // is taken apart by the library.
  std::string& target = r.path;
  if (!target.empty() && target.front() != '/' && target != "*") {
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(target.data(), target.size(), method == HTTP_CONNECT, &u) != 0) {
      return StopParse(c, 400, "malformed-request", "cannot parse the request target");
    }
    std::string path = (u.field_set & (1u << UF_PATH)) != 0
                           ? target.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len)
                           : std::string("/");
    if ((u.field_set & (1u << UF_QUERY)) != 0) {
      r.query = target.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    }
    target = std::move(path);
  } else {
    size_t hash = target.find('#');
    if (hash != std::string::npos) target.resize(hash);
    size_t q = target.find('?');
    if (q != std::string::npos) {
      r.query.assign(target, q + 1, std::string::npos);
      target.resize(q);
    }
  }

  const bool has_length = (p->flags & F_CONTENTLENGTH) != 0;
  const bool chunked = (p->flags & F_CHUNKED) != 0;
  const size_t limit = s->opts_.max_body_bytes;
  if (has_length && p->content_length > limit) {
    return StopParse(c, 413, "body-too-large",
                     "the request body of " + std::to_string(p->content_length) + " bytes exceeds the limit of " +
                         std::to_string(limit) + " bytes");
  }
  if (!has_length && !chunked && (method == HTTP_POST || method == HTTP_PUT || method == HTTP_PATCH)) {
    return StopParse(c, 411, "length-required",
                     r.method + " needs a Content-Length header or Transfer-Encoding: chunked");
  }
  const bool has_body = chunked || (has_length && p->content_length > 0);
  if (has_body) {
    if (has_length) r.body.reserve(static_cast<size_t>(p->content_length));
    s->SetPhase(c, Phase::kBody);
    // A client that waits for "100 Continue" gets it once every earlier
    // response is queued ahead of it; otherwise it sends after its own
    // short wait.
    if (p->http_major == 1 && p->http_minor >= 1 && c->pending() == 0) {
      const std::string* expect = r.Header("expect");
      if (expect != nullptr && EqualsIgnoreCase(*expect, "100-continue")) {
        c->out.append(kContinue, sizeof kContinue - 1);
        c->flush_wanted = true;
      }
    }
  }
  return 0;
}

int HttpServer::Impl::OnBody(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<Connection*>(p->data);
  const size_t limit = c->server->opts_.max_body_bytes;
  if (c->request.body.size() + len > limit) {
    return StopParse(c, 413, "body-too-large",
                     "the request body exceeds the limit of " + std::to_string(limit) + " bytes");
  }
  c->request.body.append(at, len);
  return 0;
}

int HttpServer::Impl::OnMessageComplete(http_parser* p) {
  auto* c = static_cast<Connection*>(p->data);
  c->in_message = false;
  c->message_ready = true;
  // After CONNECT the bytes that follow are not HTTP; we never tunnel.
  c->message_keep_alive = http_should_keep_alive(p) != 0 && p->method != HTTP_CONNECT;
  c->message_http10 = p->http_major == 1 && p->http_minor == 0;
  c->message_head = p->method == HTTP_HEAD;
  // The handler runs after http_parser_execute returns (see Parse), never
  // inside it: it may answer at once, and answering may close the
  // connection.
  http_parser_pause(p, 1);
  return 0;
}

void HttpServer::Impl::Dispatch(Connection* c) {
  c->message_ready = false;
  requests_.Add();
  const uint64_t seq = c->next_seq++;
  ResponseSlot& slot = c->slot(seq);
  slot.ready = false;
  slot.head_request = c->message_head;
  slot.bytes.clear();
  if (!c->message_keep_alive) {
    slot.connection = ConnectionHeader::kClose;
    c->reading = false;
  } else {
    slot.connection = c->message_http10 ? ConnectionHeader::kKeepAlive : ConnectionHeader::kNone;
  }
  SetPhase(c, Phase::kWaiting);
  c->request.peer = c->peer;
  c->request.peer_is_local = c->peer_is_local;
  handler_(std::move(c->request), HttpResponder(Responder{link_, c->id, seq}));
}

// ---- writing ----

void HttpServer::Impl::Respond(uint64_t id, uint64_t seq, const HttpResponse& response) {
  Connection* c = Lookup(id);
  if (c == nullptr || c->doomed) return;
  if (seq < c->head_seq || seq >= c->next_seq || c->slot(seq).ready) return;  // answered already
  ConnGuard guard(this, c);
  Fill(c, seq, response);
}

void HttpServer::Impl::QueueServerResponse(Connection* c, const HttpResponse& response) {
  if (c->pending() >= c->slots.size()) {
    // Every slot is taken by a request still with the handler, so the
    // answer cannot be queued in order: give up on the connection.
    Doom(c);
    return;
  }
  const uint64_t seq = c->next_seq++;
  ResponseSlot& slot = c->slot(seq);
  slot.ready = false;
  slot.head_request = false;
  slot.bytes.clear();
  slot.connection = ConnectionHeader::kClose;
  c->reading = false;
  Fill(c, seq, response);
}

void HttpServer::Impl::Fill(Connection* c, uint64_t seq, const HttpResponse& response) {
  responses_.Add();
  ResponseSlot& slot = c->slot(seq);
  if (seq != c->head_seq) {
    // Answered before an earlier request: park it until its turn.
    http_internal::AppendResponse(&slot.bytes, response, slot.connection, slot.head_request);
    slot.ready = true;
    return;
  }
  http_internal::AppendResponse(&c->out, response, slot.connection, slot.head_request);
  for (;;) {
    ResponseSlot& head = c->slot(c->head_seq);
    if (head.connection == ConnectionHeader::kClose) {
      c->close_when_flushed = true;
      c->reading = false;
    }
    head.ready = false;
    ++c->head_seq;
    if (c->close_when_flushed || c->head_seq == c->next_seq) break;
    ResponseSlot& next = c->slot(c->head_seq);
    if (!next.ready) break;
    c->out.append(next.bytes);
    next.bytes.clear();
    ReleaseIfLarge(&next.bytes);
  }
  c->flush_wanted = true;
}

void HttpServer::Impl::Flush(Connection* c) {
  c->flush_wanted = false;
  bool progressed = false;
  while (c->has_output()) {
    Result<TransportIo> w = c->transport->Write(c->out.data() + c->out_off, c->out.size() - c->out_off);
    if (!w.ok()) {
      // EPIPE, ECONNRESET: the peer is gone; nothing more to tell it.
      WS_LOG_DEBUG(kLog, "write failed", {{"peer", c->peer}, {"error", w.status().message()}});
      Doom(c);
      return;
    }
    if (w->bytes > 0) {
      c->out_off += w->bytes;
      progressed = true;
      continue;
    }
    c->write_wants_read = w->wait == TransportWait::kReadable;
    break;
  }
  if (c->has_output()) {
    // A client that stops reading its answers is dropped after the idle
    // timeout without progress.
    if (progressed || c->write_deadline == 0) c->write_deadline = NowMs() + opts_.idle_timeout_ms;
    return;
  }
  c->out.clear();
  c->out_off = 0;
  ReleaseIfLarge(&c->out);
  c->write_deadline = 0;
  if (c->close_when_flushed) {
    StartLinger(c);
    return;
  }
  if (c->pending() == 0 && !c->in_message && c->phase == Phase::kWaiting) SetPhase(c, Phase::kIdle);
}

void HttpServer::Impl::StartLinger(Connection* c) {
  c->reading = false;
  c->held.clear();
  c->held_off = 0;
  if (c->peer_eof || !c->transport->CloseWrite().ok()) {
    // Peer done already, or ENOTCONN after a reset: nothing to drain.
    Doom(c);
    return;
  }
  SetPhase(c, Phase::kLinger);
}

void HttpServer::Impl::Settle(Connection* c) {
  ++c->busy;  // what runs below may call back in (a handler answering at once)
  while (!c->doomed) {
    if (c->flush_wanted) Flush(c);
    if (c->doomed) break;
    if (c->reading && c->has_held() && !Backpressured(c)) {
      // Requests read ahead and held back: their turn has come.
      size_t used = Parse(c, c->held.data() + c->held_off, c->held.size() - c->held_off);
      c->held_off += used;
      if (!c->has_held() || !c->reading) {
        c->held.clear();
        c->held_off = 0;
        ReleaseIfLarge(&c->held);
      }
      continue;
    }
    if (c->reading && !c->handshaking && !c->has_held() && !Backpressured(c) && !c->peer_eof &&
        c->transport->HasBufferedInput()) {
      // Requests the transport took off the socket before backpressure
      // stopped us: no readiness event will announce them.
      OnReadable(c);
      continue;
    }
    if (!c->flush_wanted) break;
  }
  --c->busy;
  if (!c->doomed && c->peer_eof && c->pending() == 0 && !c->has_output() && !c->has_held() &&
      c->phase != Phase::kLinger) {
    Doom(c);  // the client closed its side and has every answer
  }
  if (!c->doomed) UpdateInterest(c);
  if (c->doomed) Destroy(c);
}

void HttpServer::Impl::UpdateInterest(Connection* c) {
  uint32_t want = 0;
  if (c->handshaking) {
    want = c->handshake_wait == TransportWait::kWritable ? EventLoop::kWritable : EventLoop::kReadable;
  } else {
    // A direction the transport waits on in place of the other one replaces
    // it; asking for both would spin on a socket that is always writable.
    const bool wants_requests = c->reading && !c->peer_eof && !c->has_held() && !Backpressured(c);
    if (c->phase == Phase::kLinger || (wants_requests && !c->read_wants_write) || c->write_wants_read) {
      want |= EventLoop::kReadable;
    }
    if ((c->has_output() && !c->write_wants_read) || (wants_requests && c->read_wants_write)) {
      want |= EventLoop::kWritable;
    }
  }
  if (want == c->interest) return;
  Status s = loop_->ModifyFd(c->fd.get(), want);
  if (!s.ok()) {
    WS_LOG_ERROR(kLog, "cannot change connection interest", {{"peer", c->peer}, {"error", s.ToString()}});
    Doom(c);
    return;
  }
  c->interest = want;
}

// ---- deadlines ----

void HttpServer::Impl::SetPhase(Connection* c, Phase phase) {
  c->phase = phase;
  switch (phase) {
    case Phase::kHandshake:
      c->read_deadline = NowMs() + opts_.header_timeout_ms;
      break;
    case Phase::kIdle:
      c->read_deadline = NowMs() + opts_.idle_timeout_ms;
      break;
    case Phase::kHeaders:
      c->read_deadline = NowMs() + opts_.header_timeout_ms;
      break;
    case Phase::kBody:
      c->read_deadline = NowMs() + opts_.body_timeout_ms;
      break;
    case Phase::kWaiting:
      c->read_deadline = 0;
      break;
    case Phase::kLinger:
      c->read_deadline = NowMs() + std::min(kLingerMs, opts_.idle_timeout_ms);
      break;
  }
}

void HttpServer::Impl::ArmSweep() {
  if (closed_ || sweep_timer_ != 0 || open_ + rejecting_ == 0) return;
  sweep_timer_ = loop_->AddTimer(sweep_ms_, [this] {
    sweep_timer_ = 0;
    Sweep();
  });
}

void HttpServer::Impl::Sweep() {
  const int64_t now = NowMs();
  for (size_t i = 0; i < table_.size(); ++i) {
    Connection* c = table_[i].conn.get();
    if (c != nullptr && !c->doomed) CheckDeadlines(c, now);
  }
  ArmSweep();
}

void HttpServer::Impl::CheckDeadlines(Connection* c, int64_t now) {
  const bool write_late = c->write_deadline != 0 && now >= c->write_deadline;
  // While backpressure holds reading back, the client is not the slow one.
  const bool reading_phase = c->phase == Phase::kHeaders || c->phase == Phase::kBody;
  const bool read_late = c->read_deadline != 0 && now >= c->read_deadline && !(reading_phase && Backpressured(c));
  if (!write_late && !read_late) return;
  ConnGuard guard(this, c);
  if (write_late) {
    timeouts_.Add();
    WS_LOG_DEBUG(kLog, "client does not read its responses; closing", {{"peer", c->peer}});
    Doom(c);
    return;
  }
  switch (c->phase) {
    case Phase::kHandshake:
      // Nothing can be answered before the handshake: just close.
      timeouts_.Add();
      WS_LOG_DEBUG(kLog, "handshake too slow; closing", {{"peer", c->peer}});
      Doom(c);
      return;
    case Phase::kIdle:
    case Phase::kLinger:
    case Phase::kWaiting:
      Doom(c);
      return;
    case Phase::kHeaders:
    case Phase::kBody: {
      timeouts_.Add();
      const bool headers = c->phase == Phase::kHeaders;
      WS_LOG_DEBUG(kLog, headers ? "request headers too slow; closing" : "request body too slow; closing",
                   {{"peer", c->peer}});
      c->read_deadline = 0;
      if (c->pending() != 0 || c->has_output()) {
        Doom(c);  // earlier answers still queued: a 408 could not go out in order soon
        return;
      }
      c->in_message = false;
      const int64_t limit = headers ? opts_.header_timeout_ms : opts_.body_timeout_ms;
      QueueServerResponse(c, ProblemResponse(408, "request-timeout",
                                             std::string(headers ? "request headers" : "request body") +
                                                 " not received within " + std::to_string(limit) + " ms"));
      return;
    }
  }
}

// ---- public surface ----

const std::string* HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return &value;
  }
  return nullptr;
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

Result<std::unique_ptr<HttpServer>> HttpServer::Create(EventLoop* loop, HttpServerOptions options,
                                                       HttpHandler handler) {
  if (loop == nullptr) return InvalidArgument("HttpServer: no event loop");
  if (!handler) return InvalidArgument("HttpServer: no handler");
  if (options.listen.empty()) return InvalidArgument("HttpServer: no listen address");
  if (options.idle_timeout_ms <= 0 || options.header_timeout_ms <= 0 || options.body_timeout_ms <= 0) {
    return InvalidArgument("HttpServer: timeouts must be positive");
  }
  if (options.max_header_bytes == 0 || options.max_url_bytes == 0 || options.max_connections == 0 ||
      options.max_pipelined == 0) {
    return InvalidArgument("HttpServer: limits must be positive");
  }
  if (options.transports.size() > options.listen.size()) {
    return InvalidArgument("HttpServer: more transports than listen addresses");
  }
  auto impl = std::make_unique<Impl>(loop, std::move(options), std::move(handler));
  WS_TRY(impl->Start());
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

std::vector<std::string> HttpServer::BoundAddresses() const { return impl_->bound(); }

void HttpServer::Close() { impl_->Close(); }

HttpServerStats HttpServer::Stats() const { return impl_->Stats(); }

}  // namespace ws
