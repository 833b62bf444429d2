// HttpServer against real sockets: curl where a user would use it, raw
// sockets for the protocol edge cases. The server runs on a real EventLoop
// on its own thread; tests wait for conditions with generous deadlines and
// never assert on timing.
#include "adapters/http/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "platform/event_loop.h"
#include "platform/unique_fd.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

using ::ws::testing::CurlReply;
using ::ws::testing::RunCommand;
using ::ws::testing::RunCurl;
using ::ws::testing::TempDir;

constexpr int kWaitMs = 15000;

bool WaitFor(const std::function<bool()>& condition, int timeout_ms = kWaitMs) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

uint16_t PortOf(const std::string& bound) {
  return static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
}

// A blocking client socket with a deadline on every read.
class RawClient {
 public:
  bool ConnectTcp(uint16_t port) {
    fd_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd_.valid()) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // One response: head plus Content-Length bytes of body. "" on timeout or
  // close before it was complete.
  std::string ReadResponse(int timeout_ms = kWaitMs) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      size_t end = buf_.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t body = ContentLength(buf_.substr(0, end + 4));
        if (buf_.size() >= end + 4 + body) {
          std::string r = buf_.substr(0, end + 4 + body);
          buf_.erase(0, end + 4 + body);
          return r;
        }
      }
      if (Fill(deadline) <= 0) return "";
    }
  }

  // True once the server has closed the connection (EOF or reset); what
  // arrives before is kept in rest().
  bool WaitClosed(int timeout_ms = kWaitMs) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int r = Fill(deadline);
      if (r == 0 || r == -2) return true;
      if (r == -1) return false;
    }
  }

  // Non-blocking: keeps what has arrived in rest(); true if the server has
  // closed by now.
  bool ClosedNow() {
    for (;;) {
      char chunk[4096];
      ssize_t n = recv(fd_.get(), chunk, sizeof chunk, MSG_DONTWAIT);
      if (n > 0) {
        buf_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
  }

  // Closes with RST instead of FIN.
  void Reset() {
    linger lg{1, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    fd_.Reset();
  }
  void Close() { fd_.Reset(); }
  // Half-close: the server sees EOF but can still answer.
  bool ShutdownWrite() { return shutdown(fd_.get(), SHUT_WR) == 0; }

  const std::string& rest() const { return buf_; }

 private:
  static size_t ContentLength(const std::string& head) {
    std::string lower = head;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    size_t at = lower.find("\r\ncontent-length: ");
    if (at == std::string::npos) return 0;
    return static_cast<size_t>(std::stoul(lower.substr(at + 18)));
  }

  // >0 bytes read, 0 EOF, -1 timeout, -2 error (reset).
  int Fill(std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return -1;
      pollfd p{fd_.get(), POLLIN, 0};
      int pr = poll(&p, 1, static_cast<int>(left.count()));
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) return -1;
      char chunk[65536];
      ssize_t n = recv(fd_.get(), chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return -2;
      if (n == 0) return 0;
      buf_.append(chunk, static_cast<size_t>(n));
      return static_cast<int>(n);
    }
  }

  UniqueFd fd_;
  std::string buf_;
};

std::string BodyOf(const std::string& response) {
  size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}


// Answers with a text description of the request.
HttpResponse Describe(const HttpRequest& req) {
  HttpResponse r;
  r.content_type = "text/plain";
  r.body = req.method + " " + req.path;
  if (!req.query.empty()) r.body += "?" + req.query;
  r.body += "\npeer " + req.peer + (req.peer_is_local ? " local" : " remote");
  if (const std::string* v = req.Header("x-test")) r.body += "\nx-test " + *v;
  r.body += "\nbody " + req.body;
  return r;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status().ToString();
    loop_ = std::move(loop).value();
  }

  void TearDown() override {
    StopLoop();
    server_.reset();
  }

  static HttpServerOptions LocalOptions() {
    HttpServerOptions o;
    o.listen = {"127.0.0.1:0"};
    return o;
  }

  void Start(HttpServerOptions options, HttpHandler handler) {
    auto server = HttpServer::Create(loop_.get(), std::move(options), std::move(handler));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { loop_status_ = loop_->Run(); });
  }

  void StartEcho(HttpServerOptions options = LocalOptions()) {
    Start(std::move(options), [](HttpRequest&& req, HttpResponder respond) { respond(Describe(req)); });
  }

  void StopLoop() {
    if (!thread_.joinable()) return;
    loop_->Stop();
    thread_.join();
    EXPECT_TRUE(loop_status_.ok()) << loop_status_.ToString();
  }

  // Runs `fn` on the loop thread and waits for it.
  void OnLoop(std::function<void()> fn) {
    std::promise<void> done;
    loop_->Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

  std::string Url(const std::string& path) const { return "http://" + server_->BoundAddresses()[0] + path; }
  uint16_t Port() const { return PortOf(server_->BoundAddresses()[0]); }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  Status loop_status_;
};

TEST_F(HttpServerTest, GetAndPostRoundTripWithCurl) {
  StartEcho();
  CurlReply get = RunCurl({Url("/v1/health?verbose=1&x=%20")});
  EXPECT_EQ(get.exit_code, 0);
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.content_type, "text/plain");
  EXPECT_TRUE(Contains(get.body, "GET /v1/health?verbose=1&x=%20\n")) << get.body;
  EXPECT_TRUE(Contains(get.body, "peer 127.0.0.1:")) << get.body;
  EXPECT_TRUE(Contains(get.body, " local\n")) << get.body;

  CurlReply post = RunCurl({"-H", "X-Test: Mixed Case Value", "-H", "Content-Type: application/json", "--data-binary",
                         "{\"hello\":1}", Url("/v1/events")});
  EXPECT_EQ(post.exit_code, 0);
  EXPECT_EQ(post.status, 200);
  EXPECT_TRUE(Contains(post.body, "POST /v1/events\n")) << post.body;
  EXPECT_TRUE(Contains(post.body, "x-test Mixed Case Value\n")) << post.body;
  EXPECT_TRUE(Contains(post.body, "body {\"hello\":1}")) << post.body;
  EXPECT_EQ(server_->Stats().requests, 2u);
}

TEST_F(HttpServerTest, ResponseFormatIsExact) {
  Start(LocalOptions(), [](HttpRequest&&, HttpResponder respond) {
    HttpResponse r;
    r.status = 202;
    r.headers = {{"X-Id", "7"}, {"Bad", "a\r\nInjected: 1"}, {"Content-Length", "99"}};
    r.body = "{\"id\":\"7\"}";
    respond(std::move(r));
  });
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(c.ReadResponse(),
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 10\r\n"
            "X-Id: 7\r\n\r\n{\"id\":\"7\"}");
}

TEST_F(HttpServerTest, KeepAliveReusesOneConnectionForTwoUrls) {
  StartEcho();
  std::string out;
  ASSERT_EQ(RunCommand({"curl", "-sS", "--noproxy", "*", "--max-time", "30", Url("/a"), Url("/b")}, &out), 0);
  EXPECT_TRUE(Contains(out, "GET /a\n")) << out;
  EXPECT_TRUE(Contains(out, "GET /b\n")) << out;
  HttpServerStats s = server_->Stats();
  EXPECT_EQ(s.connections_accepted, 1u);
  EXPECT_EQ(s.requests, 2u);
}

TEST_F(HttpServerTest, PipelinedResponsesKeepRequestOrderWhenTheFirstAnswersLast) {
  std::vector<std::string> answered;  // loop thread only
  EventLoop* loop = loop_.get();
  Start(LocalOptions(), [loop, &answered](HttpRequest&& req, HttpResponder respond) {
    HttpResponse r;
    r.content_type = "text/plain";
    r.body = req.path;
    if (req.path == "/slow") {
      loop->AddTimer(200, [&answered, respond, r]() {
        answered.push_back(r.body);
        respond(r);
      });
      return;
    }
    answered.push_back(r.body);
    respond(std::move(r));
  });
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(
      c.Send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
             "POST /fast2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"));
  EXPECT_EQ(BodyOf(c.ReadResponse()), "/slow");
  EXPECT_EQ(BodyOf(c.ReadResponse()), "/fast");
  EXPECT_EQ(BodyOf(c.ReadResponse()), "/fast2");
  std::vector<std::string> order;
  OnLoop([&] { order = answered; });
  // The later requests really were answered first.
  EXPECT_EQ(order, (std::vector<std::string>{"/fast", "/fast2", "/slow"}));
  EXPECT_EQ(server_->Stats().connections_accepted, 1u);
}

TEST_F(HttpServerTest, PipelineLongerThanMaxPipelinedIsServedInOrder) {
  EventLoop* loop = loop_.get();
  HttpServerOptions o = LocalOptions();
  o.max_pipelined = 3;
  Start(o, [loop](HttpRequest&& req, HttpResponder respond) {
    HttpResponse r;
    r.body = req.path;
    // Odd requests answer later, so the window fills and drains repeatedly.
    if ((req.path.back() - '0') % 2 == 1) {
      loop->AddTimer(5, [respond, r]() { respond(r); });
    } else {
      respond(std::move(r));
    }
  });
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  std::string batch;
  constexpr int kRequests = 60;
  for (int i = 0; i < kRequests; ++i) batch += "GET /r" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(c.Send(batch));
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(BodyOf(c.ReadResponse()), "/r" + std::to_string(i));
  }
  EXPECT_EQ(server_->Stats().requests, static_cast<uint64_t>(kRequests));
}

TEST_F(HttpServerTest, ChunkedRequestBodyIsDechunked) {
  StartEcho();
  CurlReply r =
      RunCurl({"-H", "Transfer-Encoding: chunked", "--data-binary", "hello chunked world", Url("/v1/events")});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(Contains(r.body, "body hello chunked world")) << r.body;

  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(
      c.Send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\n\r\n"));
  EXPECT_TRUE(Contains(BodyOf(c.ReadResponse()), "body hello, world"));
}

void ExpectProblem(const std::string& response, int status, const std::string& slug) {
  EXPECT_EQ(response.rfind("HTTP/1.1 " + std::to_string(status) + " ", 0), 0u) << response;
  EXPECT_TRUE(Contains(response, "\r\nContent-Type: application/problem+json\r\n")) << response;
  EXPECT_TRUE(Contains(response, "\r\nConnection: close\r\n")) << response;
  EXPECT_TRUE(Contains(response, "\"type\":\"https://waystation.dev/problems/" + slug + "\"")) << response;
  EXPECT_TRUE(Contains(response, "\"status\":" + std::to_string(status) + ",")) << response;
}

TEST_F(HttpServerTest, BodyOverLimitIs413WithoutReachingTheHandler) {
  HttpServerOptions o = LocalOptions();
  o.max_body_bytes = 1024;
  StartEcho(o);
  TempDir dir;
  std::string file = dir.File("big.json");
  ASSERT_EQ(RunCommand({"sh", "-c", "head -c 4096 /dev/zero | tr '\\0' x > " + file}, nullptr), 0);
  CurlReply r = RunCurl({"--data-binary", "@" + file, Url("/v1/events")});
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.content_type, "application/problem+json");
  EXPECT_TRUE(Contains(r.body, "\"type\":\"https://waystation.dev/problems/body-too-large\"")) << r.body;
  EXPECT_TRUE(Contains(r.body, "\"title\":\"Content Too Large\"")) << r.body;

  // Chunked: the limit is enforced while the chunks arrive.
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
  std::string chunk = "200\r\n" + std::string(0x200, 'y') + "\r\n";
  ASSERT_TRUE(c.Send(chunk));
  ASSERT_TRUE(c.Send(chunk));
  c.Send(chunk);  // may fail: the server has stopped reading
  ExpectProblem(c.ReadResponse(), 413, "body-too-large");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(server_->Stats().requests, 0u);
  EXPECT_EQ(server_->Stats().limit_errors, 2u);
}

TEST_F(HttpServerTest, LongUrlIs414) {
  StartEcho();
  CurlReply r = RunCurl({Url("/" + std::string(5000, 'u'))});
  EXPECT_EQ(r.status, 414);
  EXPECT_EQ(r.content_type, "application/problem+json");
  EXPECT_TRUE(Contains(r.body, "/problems/url-too-long")) << r.body;
  EXPECT_EQ(server_->Stats().requests, 0u);
}

TEST_F(HttpServerTest, LargeHeadersAre431) {
  StartEcho();
  CurlReply r = RunCurl({"-H", "X-Big: " + std::string(20000, 'h'), Url("/")});
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(r.content_type, "application/problem+json");
  EXPECT_TRUE(Contains(r.body, "/problems/headers-too-large")) << r.body;
}

TEST_F(HttpServerTest, PostWithoutLengthIs411) {
  StartEcho();
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("POST /v1/events HTTP/1.1\r\nHost: x\r\n\r\n"));
  ExpectProblem(c.ReadResponse(), 411, "length-required");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(server_->Stats().requests, 0u);
}

TEST_F(HttpServerTest, GarbageIs400AndCloses) {
  StartEcho();
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("HELLO THERE\r\n\r\n"));
  ExpectProblem(c.ReadResponse(), 400, "malformed-request");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(server_->Stats().parse_errors, 1u);

  // Content-Length together with chunked is refused (request smuggling).
  RawClient d;
  ASSERT_TRUE(d.ConnectTcp(Port()));
  ASSERT_TRUE(d.Send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
  ExpectProblem(d.ReadResponse(), 400, "malformed-request");
}

TEST_F(HttpServerTest, ErrorAfterGoodPipelinedRequestComesSecond) {
  StartEcho();
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\nPOST /bad HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(BodyOf(c.ReadResponse()), "GET /ok\n"));
  ExpectProblem(c.ReadResponse(), 411, "length-required");
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpServerTest, OverMaxConnectionsGets503) {
  HttpServerOptions o = LocalOptions();
  o.max_connections = 1;
  StartEcho(o);
  RawClient holder;
  ASSERT_TRUE(holder.ConnectTcp(Port()));
  ASSERT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 1; }));

  CurlReply r = RunCurl({Url("/v1/health")});
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.content_type, "application/problem+json");
  EXPECT_TRUE(Contains(r.body, "/problems/too-many-connections")) << r.body;
  EXPECT_EQ(server_->Stats().connections_rejected, 1u);

  // The one admitted connection is served normally...
  ASSERT_TRUE(holder.Send("GET /held HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(BodyOf(holder.ReadResponse()), "GET /held\n"));
  // ...and once it is gone there is room again.
  holder.Close();
  ASSERT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 0; }));
  CurlReply again = RunCurl({Url("/v1/health")});
  EXPECT_EQ(again.status, 200);
}

TEST_F(HttpServerTest, SlowlorisIsCutOffWhileOthersAreServed) {
  HttpServerOptions o = LocalOptions();
  o.header_timeout_ms = 300;
  StartEcho(o);
  std::atomic<bool> sending{true};
  std::atomic<bool> cut_off{false};
  std::atomic<int> bytes_sent{0};
  RawClient slow;
  ASSERT_TRUE(slow.ConnectTcp(Port()));
  std::thread trickler([&] {
    const std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    // The header never ends: at one byte per 100 ms the client would hold
    // the connection for minutes.
    for (int i = 0; i < 3000 && sending; ++i) {
      char byte = i < static_cast<int>(head.size()) ? head[static_cast<size_t>(i)] : 'a';
      if (slow.ClosedNow() || !slow.Send(std::string_view(&byte, 1))) {
        cut_off = true;
        return;
      }
      ++bytes_sent;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  ASSERT_TRUE(WaitFor([&] { return bytes_sent > 0; }));
  // A well-behaved client is served while the slow one trickles.
  CurlReply r = RunCurl({Url("/v1/health")});
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(WaitFor([&] { return cut_off.load(); }, 30000));
  sending = false;
  trickler.join();
  EXPECT_GE(server_->Stats().timeouts, 1u);
  EXPECT_EQ(slow.rest().rfind("HTTP/1.1 408 ", 0), 0u) << slow.rest();
}

TEST_F(HttpServerTest, StalledBodyIsCutOff) {
  HttpServerOptions o = LocalOptions();
  o.body_timeout_ms = 300;
  StartEcho(o);
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"));
  ExpectProblem(c.ReadResponse(), 408, "request-timeout");
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(server_->Stats().requests, 0u);
}

TEST_F(HttpServerTest, IdleKeepAliveConnectionIsClosed) {
  HttpServerOptions o = LocalOptions();
  o.idle_timeout_ms = 200;
  StartEcho(o);
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_FALSE(c.ReadResponse().empty());
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_TRUE(c.rest().empty()) << c.rest();
  EXPECT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 0; }));
  EXPECT_EQ(server_->Stats().timeouts, 0u);  // an idle close is normal, not a timeout
}

TEST_F(HttpServerTest, Http10ClosesUnlessKeepAliveAndConnectionCloseIsHonoured) {
  StartEcho();
  RawClient a;
  ASSERT_TRUE(a.ConnectTcp(Port()));
  ASSERT_TRUE(a.Send("GET /a HTTP/1.0\r\n\r\n"));
  std::string ra = a.ReadResponse();
  EXPECT_TRUE(Contains(ra, "\r\nConnection: close\r\n")) << ra;
  EXPECT_TRUE(a.WaitClosed());

  RawClient b;
  ASSERT_TRUE(b.ConnectTcp(Port()));
  ASSERT_TRUE(b.Send("GET /b1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  std::string rb = b.ReadResponse();
  EXPECT_TRUE(Contains(rb, "\r\nConnection: keep-alive\r\n")) << rb;
  ASSERT_TRUE(b.Send("GET /b2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  EXPECT_TRUE(Contains(BodyOf(b.ReadResponse()), "GET /b2\n"));

  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n"));
  std::string rc = c.ReadResponse();
  EXPECT_TRUE(Contains(rc, "\r\nConnection: close\r\n")) << rc;
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_TRUE(c.rest().empty()) << c.rest();
}

TEST_F(HttpServerTest, HeadAnswerHasLengthButNoBody) {
  StartEcho();
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  ASSERT_TRUE(c.WaitClosed());
  const std::string& all = c.rest();
  size_t head_end = all.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos) << all;
  EXPECT_TRUE(Contains(all.substr(0, head_end), "\r\nContent-Length: ")) << all;
  // The GET answer follows the HEAD answer's blank line directly.
  EXPECT_EQ(all.find("HTTP/1.1 200 OK\r\n", 1), head_end + 4) << all;
  EXPECT_TRUE(Contains(all, "GET /g\n")) << all;
}

TEST_F(HttpServerTest, ExpectContinueGetsInterimResponse) {
  StartEcho();
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(c.Send("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  EXPECT_EQ(c.ReadResponse(), "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(c.Send("hello"));
  EXPECT_TRUE(Contains(BodyOf(c.ReadResponse()), "body hello"));
}

TEST_F(HttpServerTest, LargeResponseIsWrittenCompletely) {
  constexpr size_t kSize = 3 * 1024 * 1024;
  Start(LocalOptions(), [](HttpRequest&&, HttpResponder respond) {
    HttpResponse r;
    r.content_type = "application/octet-stream";
    r.body.assign(kSize, 'z');
    respond(std::move(r));
  });
  std::string out;
  ASSERT_EQ(RunCommand({"curl", "-sS", "--noproxy", "*", "--max-time", "30", "-o", "/dev/null", "-o", "/dev/null", "-w",
                        "%{http_code} %{size_download}", Url("/big"), Url("/big")},
                       &out),
            0);
  EXPECT_EQ(out, "200 " + std::to_string(kSize) + "200 " + std::to_string(kSize));
}

// A transport as awkward as a TLS engine may be: its handshake first waits
// for writability; each read first waits for writability, then takes
// everything off the socket but hands it out 7 bytes at a time (the rest stays
// buffered, invisible to epoll); writes are short.
class AwkwardTransport final : public Transport {
 public:
  explicit AwkwardTransport(int fd) : fd_(fd) {}

  Result<TransportWait> Handshake() override {
    return ++handshake_calls_ == 1 ? TransportWait::kWritable : TransportWait::kNone;
  }

  Result<TransportIo> Read(char* data, size_t len) override {
    if (buffered_.empty()) {
      read_waited_ = !read_waited_;
      if (read_waited_) return TransportIo{0, TransportWait::kWritable, false};
      char chunk[65536];
      ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
      if (n == 0) return TransportIo{0, TransportWait::kNone, true};
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return TransportIo{0, TransportWait::kReadable, false};
        return ErrnoStatus(errno, "recv");
      }
      buffered_.assign(chunk, static_cast<size_t>(n));
    }
    const size_t k = std::min({len, buffered_.size(), size_t{7}});
    std::memcpy(data, buffered_.data(), k);
    buffered_.erase(0, k);
    return TransportIo{k, TransportWait::kNone, false};
  }

  Result<TransportIo> Write(const char* data, size_t len) override {
    ssize_t n = send(fd_, data, std::min<size_t>(len, 1000), MSG_NOSIGNAL);
    if (n >= 0) return TransportIo{static_cast<size_t>(n), TransportWait::kNone, false};
    if (errno == EAGAIN || errno == EWOULDBLOCK) return TransportIo{0, TransportWait::kWritable, false};
    return ErrnoStatus(errno, "send");
  }

  bool HasBufferedInput() const override { return !buffered_.empty(); }

  Status CloseWrite() override {
    if (shutdown(fd_, SHUT_WR) != 0) return ErrnoStatus(errno, "shutdown");
    return Status::Ok();
  }

 private:
  int fd_;
  int handshake_calls_ = 0;
  bool read_waited_ = false;
  std::string buffered_;
};

class AwkwardFactory final : public TransportFactory {
 public:
  Result<std::unique_ptr<Transport>> Accept(int fd) override {
    ++accepted;
    return std::unique_ptr<Transport>(std::make_unique<AwkwardTransport>(fd));
  }
  std::string Name() const override { return "awkward"; }
  std::atomic<int> accepted{0};
};

TEST_F(HttpServerTest, TransportsThatWaitOnTheOtherDirectionOrBufferInputAreServed) {
  auto factory = std::make_shared<AwkwardFactory>();
  HttpServerOptions o = LocalOptions();
  o.transports = {factory};
  Start(o, [](HttpRequest&& req, HttpResponder respond) {
    if (req.path == "/big") {
      HttpResponse r;
      r.content_type = "application/octet-stream";
      r.body.assign(size_t{300} * 1024, 'z');
      return respond(std::move(r));
    }
    respond(Describe(req));
  });
  CurlReply post = RunCurl({"--data-binary", std::string(5000, 'p'), Url("/v1/events")});
  EXPECT_EQ(post.status, 200);
  EXPECT_TRUE(Contains(post.body, "body " + std::string(5000, 'p'))) << post.body.substr(0, 200);

  // Pipelined requests arrive in one read and leave the transport 7 bytes at a time.
  RawClient c;
  ASSERT_TRUE(c.ConnectTcp(Port()));
  ASSERT_TRUE(
      c.Send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(BodyOf(c.ReadResponse()), "GET /a\n"));
  EXPECT_EQ(BodyOf(c.ReadResponse()).size(), size_t{300} * 1024);
  EXPECT_TRUE(Contains(BodyOf(c.ReadResponse()), "GET /c\n"));
  EXPECT_EQ(factory->accepted.load(), 2);
  EXPECT_EQ(server_->Stats().requests, 4u);
}

TEST_F(HttpServerTest, UnixSocketServesCurlWithMode0660) {
  TempDir dir;
  std::string path = dir.File("api.sock");
  {
    // A stale socket file left by a crashed process is replaced.
    UniqueFd stale(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  HttpServerOptions o;
  o.listen = {"unix:" + path};
  StartEcho(o);
  EXPECT_EQ(server_->BoundAddresses(), std::vector<std::string>{"unix:" + path});
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);

  CurlReply r = RunCurl({"--unix-socket", path, "http://localhost/v1/health"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(Contains(r.body, "GET /v1/health\npeer unix local\n")) << r.body;

  // A second server cannot take the socket of a running one.
  auto second = HttpServer::Create(loop_.get(), o, [](HttpRequest&&, HttpResponder) {});
  EXPECT_FALSE(second.ok());
  EXPECT_TRUE(Contains(second.status().message(), path)) << second.status().ToString();
  EXPECT_EQ(RunCurl({"--unix-socket", path, "http://localhost/again"}).status, 200);

  StopLoop();
  server_.reset();
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "socket file left behind";
}

TEST_F(HttpServerTest, Ipv6Loopback) {
  {
    UniqueFd probe(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_loopback;
    if (!probe.valid() || bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      GTEST_SKIP() << "::1 cannot be bound here";
    }
  }
  HttpServerOptions o;
  o.listen = {"[::1]:0"};
  StartEcho(o);
  const std::string bound = server_->BoundAddresses()[0];
  EXPECT_EQ(bound.rfind("[::1]:", 0), 0u) << bound;
  EXPECT_NE(PortOf(bound), 0);
  CurlReply r = RunCurl({"-g", "http://" + bound + "/six"});
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(Contains(r.body, "peer [::1]:")) << r.body;
  EXPECT_TRUE(Contains(r.body, " local\n")) << r.body;
}

TEST_F(HttpServerTest, BoundAddressesResolvePortZero) {
  HttpServerOptions o;
  o.listen = {"127.0.0.1:0", "localhost:0"};
  StartEcho(o);
  std::vector<std::string> bound = server_->BoundAddresses();
  ASSERT_EQ(bound.size(), 2u);
  EXPECT_EQ(bound[0].rfind("127.0.0.1:", 0), 0u) << bound[0];
  EXPECT_NE(PortOf(bound[0]), 0);
  EXPECT_NE(PortOf(bound[1]), 0);
  EXPECT_EQ(RunCurl({"http://" + bound[0] + "/"}).status, 200);
  EXPECT_EQ(RunCurl({"-g", "http://" + bound[1] + "/"}).status, 200);
}

TEST_F(HttpServerTest, CreateFailsCleanlyOnBadAddress) {
  TempDir dir;
  std::string path = dir.File("api.sock");
  for (const std::string bad : {"no-port", "127.0.0.1:99999", "::1:80", "[::1]80", ":8080", "unix:"}) {
    HttpServerOptions o;
    o.listen = {"unix:" + path, bad};
    auto s = HttpServer::Create(loop_.get(), o, [](HttpRequest&&, HttpResponder) {});
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << s.status().ToString();
    EXPECT_TRUE(Contains(s.status().message(), "\"" + bad + "\"")) << s.status().ToString();
    EXPECT_NE(access(path.c_str(), F_OK), 0) << "the first listener was left bound for " << bad;
  }
}

TEST_F(HttpServerTest, CreateFailsCleanlyOnTakenPort) {
  UniqueFd taken(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(taken.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(taken.get(), 1), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(taken.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  TempDir dir;
  std::string path = dir.File("api.sock");
  HttpServerOptions o;
  o.listen = {"unix:" + path, address};
  auto s = HttpServer::Create(loop_.get(), o, [](HttpRequest&&, HttpResponder) {});
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.status().message(), address)) << s.status().ToString();
  EXPECT_NE(access(path.c_str(), F_OK), 0);

  // Nothing of the failed attempt stays registered: a good server starts.
  o.listen = {"unix:" + path};
  StartEcho(o);
  EXPECT_EQ(RunCurl({"--unix-socket", path, "http://localhost/"}).status, 200);
}

TEST_F(HttpServerTest, ResponderAfterDisconnectOrCloseIsANoOp) {
  std::vector<HttpResponder> kept;  // loop thread only
  Start(LocalOptions(), [&kept](HttpRequest&&, HttpResponder respond) { kept.push_back(std::move(respond)); });
  auto kept_count = [&] {
    size_t n = 0;
    OnLoop([&] { n = kept.size(); });
    return n;
  };
  HttpResponse ok;
  ok.body = "late";

  // Peer resets while its request is with the handler.
  RawClient reset;
  ASSERT_TRUE(reset.ConnectTcp(Port()));
  ASSERT_TRUE(reset.Send("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return kept_count() == 1; }));
  reset.Reset();
  ASSERT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 0; }));
  OnLoop([&] { kept[0](ok); });
  OnLoop([&] { kept[0](ok); });

  // Peer half-closes after its request: it still gets the answer, once.
  RawClient half;
  ASSERT_TRUE(half.ConnectTcp(Port()));
  ASSERT_TRUE(half.Send("GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return kept_count() == 2; }));
  ASSERT_TRUE(half.ShutdownWrite());
  ASSERT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 1; }));
  OnLoop([&] { kept[1](ok); });
  OnLoop([&] { kept[1](ok); });
  EXPECT_EQ(BodyOf(half.ReadResponse()), "late");

  // Server closed with a request outstanding.
  RawClient third;
  ASSERT_TRUE(third.ConnectTcp(Port()));
  ASSERT_TRUE(third.Send("GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return kept_count() == 3; }));
  OnLoop([&] { server_->Close(); });
  EXPECT_TRUE(third.WaitClosed());
  OnLoop([&] { kept[2](ok); });
  EXPECT_EQ(server_->Stats().connections_open, 0u);

  // Server destroyed: the responders it handed out stay safe to call.
  StopLoop();
  server_.reset();
  for (HttpResponder& r : kept) r(ok);
}

TEST_F(HttpServerTest, PeerVanishingMidRequestLeavesNothingBehind) {
  StartEcho();
  for (int i = 0; i < 20; ++i) {
    RawClient c;
    ASSERT_TRUE(c.ConnectTcp(Port()));
    ASSERT_TRUE(c.Send(i % 2 == 0 ? "GET /partial HTTP/1.1\r\nHost: x\r\nX-"
                                  : "POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\nab"));
    if (i % 4 < 2) {
      c.Reset();
    } else {
      c.Close();
    }
  }
  EXPECT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 0; }));
  EXPECT_EQ(server_->Stats().requests, 0u);
  EXPECT_EQ(RunCurl({Url("/after")}).status, 200);
}

TEST(HttpReasonPhraseTest, CommonCodes) {
  EXPECT_EQ(HttpReasonPhrase(200), "OK");
  EXPECT_EQ(HttpReasonPhrase(202), "Accepted");
  EXPECT_EQ(HttpReasonPhrase(400), "Bad Request");
  EXPECT_EQ(HttpReasonPhrase(404), "Not Found");
  EXPECT_EQ(HttpReasonPhrase(413), "Content Too Large");
  EXPECT_EQ(HttpReasonPhrase(415), "Unsupported Media Type");
  EXPECT_EQ(HttpReasonPhrase(422), "Unprocessable Content");
  EXPECT_EQ(HttpReasonPhrase(429), "Too Many Requests");
  EXPECT_EQ(HttpReasonPhrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(HttpReasonPhrase(503), "Service Unavailable");
  EXPECT_EQ(HttpReasonPhrase(507), "Insufficient Storage");
  EXPECT_EQ(HttpReasonPhrase(299), "Unknown");
}

TEST(HttpProblemResponseTest, Rfc9457Body) {
  HttpResponse r = ProblemResponse(422, "schema-violation", "field \"type\" is missing");
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(r.content_type, "application/problem+json");
  EXPECT_EQ(r.body,
            "{\"type\":\"https://waystation.dev/problems/schema-violation\",\"title\":\"Unprocessable Content\","
            "\"status\":422,\"detail\":\"field \\\"type\\\" is missing\"}");
}

}  // namespace
}  // namespace ws
