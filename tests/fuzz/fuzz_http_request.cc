// libFuzzer target: the local API's whole request path. The input is what
// one client sends on one connection. It goes through a real HttpServer on a
// loopback port (libhttp-parser, limits, pipelining, chunked bodies), the
// LocalApi routes (auth, CloudEvents decoding, batches, Idempotency-Key,
// DLQ) and a real SQLite outbox in a temporary folder, set up once per
// process. The client half-closes after sending and reads until the server
// closes. Besides "no crash, no sanitizer report", whatever comes back must
// start as an HTTP/1.1 response.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "adapters/http/http_server.h"
#include "adapters/sqlite/sqlite_outbox.h"
#include "adapters/tls_crypto/crypto.h"
#include "core/config.h"
#include "core/routing.h"
#include "firmware/local_api.h"
#include "platform/clock.h"
#include "platform/event_loop.h"
#include "platform/unique_fd.h"

namespace {

// Longest one input may keep the connection open: the server answers what
// it can and closes a half-closed connection well within this.
constexpr int64_t kInputBoundMs = 3000;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_http_request: %s\n", what.c_str());
  std::abort();
}

// The node's folder, removed when the process exits.
std::string g_dir;

void RemoveDir() {
  std::error_code ec;
  std::filesystem::remove_all(g_dir, ec);
}

struct Node {
  std::unique_ptr<ws::EventLoop> loop;
  std::unique_ptr<ws::SqliteOutbox> outbox;
  std::unique_ptr<ws::RandomSource> random;
  ws::Router router{{}, "ws/site/node", "site", "node"};
  ws::ApiConfig api;
  std::unique_ptr<ws::LocalApi> local_api;
  std::unique_ptr<ws::HttpServer> server;
  uint16_t port = 0;
};

Node* StartNode() {
  auto* n = new Node;  // lives for the whole process
  auto loop = ws::EventLoop::Create();
  if (!loop.ok()) Fail("event loop: " + loop.status().ToString());
  n->loop = std::move(loop).value();
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ws-fuzz-http-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) Fail("mkdtemp: " + std::to_string(errno));
  g_dir = dir;
  std::atexit(RemoveDir);
  ws::SqliteOutboxOptions so;
  so.path = dir + "/outbox.db";
  so.max_bytes = 1 << 20;  // small, so that full-store answers are reached too
  so.commit_window_us = 0;
  auto outbox = ws::SqliteOutbox::Open(so);
  if (!outbox.ok()) Fail("outbox: " + outbox.status().ToString());
  n->outbox = std::move(outbox).value();
  auto random = ws::RandomSource::Create();
  if (!random.ok()) Fail("random: " + random.status().ToString());
  n->random = std::move(random).value();

  ws::LocalApiContext ctx;
  ctx.loop = n->loop.get();
  ctx.clock = &ws::SystemClock();
  ctx.outbox = n->outbox.get();
  ctx.router = &n->router;
  ctx.random = n->random.get();
  ctx.api = &n->api;
  ctx.ready = [] { return true; };
  ctx.status_json = [] { return std::string("{}"); };
  ctx.metrics_text = [] { return std::string(); };
  n->local_api = std::make_unique<ws::LocalApi>(std::move(ctx));

  ws::HttpServerOptions ho;
  ho.listen = {"127.0.0.1:0"};
  ho.max_body_bytes = size_t{64} * 1024;
  ho.idle_timeout_ms = 1000;
  ho.header_timeout_ms = 1000;
  ho.body_timeout_ms = 1000;
  ws::LocalApi* api = n->local_api.get();
  auto server = ws::HttpServer::Create(n->loop.get(), ho, [api](ws::HttpRequest&& r, ws::HttpResponder respond) {
    api->Handle(std::move(r), std::move(respond));
  });
  if (!server.ok()) Fail("server: " + server.status().ToString());
  n->server = std::move(server).value();
  const std::vector<std::string> bound = n->server->BoundAddresses();
  if (bound.empty()) Fail("server bound no address");
  const std::string& a = bound.front();
  n->port = static_cast<uint16_t>(std::stoi(a.substr(a.rfind(':') + 1)));
  return n;
}

Node& TheNode() {
  static Node* node = StartNode();
  return *node;
}

// One connection: sends `input`, half-closes, collects the answers until the
// server closes (or the bound runs out). Runs the node's loop meanwhile.
std::string Exchange(Node& n, std::string_view input) {
  ws::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) Fail("socket: " + std::to_string(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(n.port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
    Fail("connect: " + std::to_string(errno));
  }
  std::string answer;
  size_t sent = 0;
  bool shut = false;
  ws::EventLoop* loop = n.loop.get();
  auto on_ready = [&](uint32_t events) {
    if ((events & ws::EventLoop::kWritable) != 0 && !shut) {
      while (sent < input.size()) {
        ssize_t w = ::send(fd.get(), input.data() + sent, input.size() - sent, MSG_NOSIGNAL);
        if (w > 0) {
          sent += static_cast<size_t>(w);
          continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        shut = true;  // the server closed on us: nothing more to send
        break;
      }
      if (sent == input.size() && !shut) {
        ::shutdown(fd.get(), SHUT_WR);
        shut = true;
      }
      if (shut) static_cast<void>(loop->ModifyFd(fd.get(), ws::EventLoop::kReadable));
    }
    if ((events & (ws::EventLoop::kReadable | ws::EventLoop::kHangup | ws::EventLoop::kError)) != 0) {
      char buf[16384];
      for (;;) {
        ssize_t r = ::recv(fd.get(), buf, sizeof buf, 0);
        if (r > 0) {
          answer.append(buf, static_cast<size_t>(r));
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        loop->Stop();  // EOF or reset: the exchange is over
        return;
      }
    }
  };
  ws::Status s = loop->AddFd(fd.get(), ws::EventLoop::kReadable | ws::EventLoop::kWritable, on_ready);
  if (!s.ok()) Fail("watch the client socket: " + s.ToString());
  const ws::EventLoop::TimerId bound = loop->AddTimer(kInputBoundMs, [loop] { loop->Stop(); });
  s = loop->Run();
  if (!s.ok()) Fail("event loop: " + s.ToString());
  loop->CancelTimer(bound);
  loop->RemoveFd(fd.get());
  return answer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Node& node = TheNode();
  const std::string answer = Exchange(node, std::string_view(reinterpret_cast<const char*>(data), size));
  // For working on the corpus: WS_FUZZ_SHOW=1 prints every answer.
  static const bool show = std::getenv("WS_FUZZ_SHOW") != nullptr;
  if (show) std::fprintf(stderr, "---- answer\n%s\n", answer.c_str());
  if (!answer.empty() && answer.rfind("HTTP/1.1 ", 0) != 0) Fail("the answer is not an HTTP/1.1 response");
  return 0;
}
