// TlsServer as the transport of a real HttpServer on a real EventLoop, with
// certificates made by openssl at run time: curl where a user would use it,
// an mbedTLS client in the test where a connection must stay open (keep-alive
// across a reload, pipelining, large transfers), raw sockets for handshakes
// that never finish. Waits have generous deadlines; nothing measures time.
#include "adapters/tls/tls_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <mbedtls/net_sockets.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "adapters/http/http_server.h"
#include "adapters/tls/mbedtls_handles.h"
#include "platform/event_loop.h"
#include "platform/unique_fd.h"
#include "tests/support/test_certs.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

using ::ws::testing::CertAndKey;
using ::ws::testing::CurlReply;
using ::ws::testing::RunCurl;
using ::ws::testing::RunCommand;
using ::ws::testing::Slurp;
using ::ws::testing::TempDir;
using ::ws::testing::TestPki;

constexpr int kWaitMs = 15000;
constexpr size_t kBigBody = size_t{3} * 1024 * 1024;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool WaitFor(const std::function<bool()>& condition, int timeout_ms = kWaitMs) {
  return ::ws::testing::WaitUntil(condition, timeout_ms, 10);
}

void CopyOver(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

int ConnectLoopback(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// True once the server closed `fd` (EOF or reset); bytes that arrive first
// go to *got.
bool WaitClosed(int fd, std::string* got, int timeout_ms = kWaitMs) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left.count()));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return false;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      got->append(buf, static_cast<size_t>(n));
      continue;
    }
    return true;
  }
}


// The certificate curl was shown, as curl describes it ("Serial Number:1001").
std::string PresentedCertificate(uint16_t port, const std::string& ca_file) {
  std::string out;
  RunCommand({"curl", "-sS", "--noproxy", "*", "--max-time", "30", "--cacert", ca_file, "-o", "/dev/null", "-w",
              "%{certs}", "https://127.0.0.1:" + std::to_string(port) + "/"},
             &out, 60000);
  return out;
}

// A blocking TLS client on mbedTLS for what curl cannot do: keep one
// connection open while the test does something else.
class TlsTestClient {
 public:
  // Connects and completes the handshake, trusting `ca_file`; `own` is the
  // client certificate for mTLS. Returns "" or what failed.
  std::string Connect(uint16_t port, const std::string& ca_file, const CertAndKey* own = nullptr) {
    int rc = mbedtls_ctr_drbg_seed(drbg_.get(), mbedtls_entropy_func, entropy_.get(), nullptr, 0);
    if (rc != 0) return "seed " + std::to_string(rc);
    if ((rc = mbedtls_x509_crt_parse_file(ca_.get(), ca_file.c_str())) != 0) return "ca " + std::to_string(rc);
    if (own != nullptr) {
      if ((rc = mbedtls_x509_crt_parse_file(cert_.get(), own->cert.c_str())) != 0) return "cert " + std::to_string(rc);
      if ((rc = mbedtls_pk_parse_keyfile(key_.get(), own->key.c_str(), nullptr)) != 0)
        return "key " + std::to_string(rc);
    }
    rc = mbedtls_ssl_config_defaults(conf_.get(), MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                     MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) return "config " + std::to_string(rc);
    mbedtls_ssl_conf_rng(conf_.get(), mbedtls_ctr_drbg_random, drbg_.get());
    mbedtls_ssl_conf_ca_chain(conf_.get(), ca_.get(), nullptr);
    mbedtls_ssl_conf_authmode(conf_.get(), MBEDTLS_SSL_VERIFY_REQUIRED);
    if (own != nullptr && (rc = mbedtls_ssl_conf_own_cert(conf_.get(), cert_.get(), key_.get())) != 0) {
      return "own cert " + std::to_string(rc);
    }
    if ((rc = mbedtls_ssl_setup(ssl_.get(), conf_.get())) != 0) return "setup " + std::to_string(rc);
    if ((rc = mbedtls_ssl_set_hostname(ssl_.get(), "localhost")) != 0) return "hostname " + std::to_string(rc);
    fd_.Reset(ConnectLoopback(port));
    if (!fd_.valid()) return "connect";
    // Every blocking read gives up after a while instead of hanging the test.
    timeval tv{15, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    mbedtls_ssl_set_bio(ssl_.get(), &fd_, &Send, &Recv, nullptr);
    while ((rc = mbedtls_ssl_handshake(ssl_.get())) != 0) {
      if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) return "handshake " + std::to_string(rc);
    }
    return "";
  }

  bool Write(std::string_view data) {
    while (!data.empty()) {
      int rc = mbedtls_ssl_write(ssl_.get(), reinterpret_cast<const unsigned char*>(data.data()), data.size());
      if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) continue;
      if (rc <= 0) return false;
      data.remove_prefix(static_cast<size_t>(rc));
    }
    return true;
  }

  // One response (head and Content-Length bytes of body); "" on error.
  std::string ReadResponse() {
    for (;;) {
      size_t end = buf_.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t at = buf_.find("Content-Length: ");
        size_t body = at != std::string::npos && at < end ? std::stoul(buf_.substr(at + 16)) : 0;
        if (buf_.size() >= end + 4 + body) {
          std::string r = buf_.substr(0, end + 4 + body);
          buf_.erase(0, end + 4 + body);
          return r;
        }
      }
      unsigned char chunk[16384];
      int rc = mbedtls_ssl_read(ssl_.get(), chunk, sizeof chunk);
      if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) continue;
      if (rc <= 0) return "";
      buf_.append(reinterpret_cast<const char*>(chunk), static_cast<size_t>(rc));
    }
  }

  std::string PeerSerial() const {
    const mbedtls_x509_crt* peer = mbedtls_ssl_get_peer_cert(ssl_.get());
    if (peer == nullptr) return "";
    char buf[128];
    if (mbedtls_x509_serial_gets(buf, sizeof buf, &peer->serial) < 0) return "";
    return buf;
  }

 private:
  static int Send(void* ctx, const unsigned char* buf, size_t len) {
    ssize_t n = send(static_cast<UniqueFd*>(ctx)->get(), buf, len, MSG_NOSIGNAL);
    return n < 0 ? MBEDTLS_ERR_NET_SEND_FAILED : static_cast<int>(n);
  }
  static int Recv(void* ctx, unsigned char* buf, size_t len) {
    for (;;) {
      ssize_t n = recv(static_cast<UniqueFd*>(ctx)->get(), buf, len, 0);
      if (n < 0 && errno == EINTR) continue;
      return n < 0 ? MBEDTLS_ERR_NET_RECV_FAILED : static_cast<int>(n);
    }
  }

  tls_internal::Entropy entropy_;
  tls_internal::CtrDrbg drbg_;
  tls_internal::X509Certs ca_;
  tls_internal::X509Certs cert_;
  tls_internal::PrivateKey key_;
  tls_internal::SslConfig conf_;
  UniqueFd fd_;
  tls_internal::SslSession ssl_;  // last: freed first
  std::string buf_;
};

HttpResponse Describe(const HttpRequest& req) {
  HttpResponse r;
  r.content_type = "text/plain";
  if (req.path == "/big") {
    r.body.assign(kBigBody, 'b');
    return r;
  }
  r.body = req.method + " " + req.path + " body-bytes " + std::to_string(req.body.size());
  return r;
}

class TlsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    // The listener's own files, so a test can replace them before a reload.
    files_.cert_file = dir_.File("listener.crt");
    files_.key_file = dir_.File("listener.key");
    CopyOver(pki_.server.cert, files_.cert_file);
    CopyOver(pki_.server.key, files_.key_file);
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status().ToString();
    loop_ = std::move(loop).value();
  }

  void TearDown() override {
    if (thread_.joinable()) {
      loop_->Stop();
      thread_.join();
    }
    server_.reset();
  }

  void Start(HttpServerOptions options = {}, bool mtls = false) {
    if (mtls) files_.client_ca_file = pki_.ca_cert;
    Result<std::shared_ptr<TlsServer>> tls = TlsServer::Create(files_);
    ASSERT_TRUE(tls.ok()) << tls.status().ToString();
    tls_ = *tls;
    if (options.listen.empty()) options.listen = {"127.0.0.1:0"};
    options.transports = {tls_};
    auto server = HttpServer::Create(loop_.get(), std::move(options),
                                     [](HttpRequest&& req, HttpResponder respond) { respond(Describe(req)); });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    const std::string bound = server_->BoundAddresses()[0];
    port_ = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
    thread_ = std::thread([this] { EXPECT_TRUE(loop_->Run().ok()); });
  }

  // Runs `fn` on the loop thread and waits for it.
  Status OnLoop(const std::function<Status()>& fn) {
    std::promise<Status> done;
    loop_->Post([&] { done.set_value(fn()); });
    return done.get_future().get();
  }

  std::string Https(const std::string& path) const { return "https://127.0.0.1:" + std::to_string(port_) + path; }
  std::string Http(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

  TempDir dir_;
  TestPki pki_{dir_.path()};
  TlsServerFiles files_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<TlsServer> tls_;
  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
  std::thread thread_;
};

TEST_F(TlsServerTest, BadFilesAreRefusedNamingTheFileAndNeverItsContents) {
  // A key-shaped file whose bytes must never show up in a message.
  const std::string secret_marker = "c2VjcmV0LWtleS1ieXRlcw";
  const std::string garbage_key = dir_.File("garbage.key");
  std::ofstream(garbage_key) << "-----BEGIN PRIVATE KEY-----\n" << secret_marker << "\n-----END PRIVATE KEY-----\n";
  const std::string garbage_cert = dir_.File("garbage.crt");
  std::ofstream(garbage_cert) << "not a certificate\n";
  const std::string encrypted_key = dir_.File("encrypted.key");
  ASSERT_EQ(RunCommand({"openssl", "pkey", "-in", pki_.server.key, "-aes256", "-passout", "pass:secret", "-out",
                        encrypted_key},
                       nullptr),
            0);

  struct Case {
    const char* what;
    TlsServerFiles files;
    const char* starts;
    const char* mentions;
  } cases[] = {
      {"missing cert", {dir_.File("absent.crt"), pki_.server.key, ""}, "cert_file: cannot read", "No such file"},
      {"garbage cert", {garbage_cert, pki_.server.key, ""}, "cert_file: cannot parse", "garbage.crt"},
      {"missing key", {pki_.server.cert, dir_.File("absent.key"), ""}, "key_file: cannot read", "absent.key"},
      {"garbage key", {pki_.server.cert, garbage_key, ""}, "key_file: cannot parse", "garbage.key"},
      {"key of another certificate", {pki_.server.cert, pki_.client.key, ""}, "key_file: ", "does not belong"},
      {"passphrase-protected key", {pki_.server.cert, encrypted_key, ""}, "key_file: ", "passphrase"},
      {"garbage client CA", {pki_.server.cert, pki_.server.key, garbage_cert}, "client_ca_file: cannot parse", ""},
      {"missing client CA",
       {pki_.server.cert, pki_.server.key, dir_.File("absent-ca.crt")},
       "client_ca_file: cannot read",
       ""},
  };
  for (const Case& c : cases) {
    Result<std::shared_ptr<TlsServer>> server = TlsServer::Create(c.files);
    ASSERT_FALSE(server.ok()) << c.what;
    const Status refused = server.status();
    EXPECT_EQ(CheckTlsServerFiles(c.files).message(), refused.message()) << c.what;
    const std::string& m = refused.message();
    EXPECT_EQ(m.rfind(c.starts, 0), 0u) << c.what << ": " << m;
    EXPECT_TRUE(Contains(m, c.mentions)) << c.what << ": " << m;
    EXPECT_FALSE(Contains(m, secret_marker)) << c.what << ": " << m;
  }
  EXPECT_TRUE(CheckTlsServerFiles({pki_.server.cert, pki_.server.key, pki_.ca_cert}).ok());
}

TEST_F(TlsServerTest, CertificateDatesAreRightPast2038) {
  // ~27 years: beyond what a 32-bit time_t (armhf) can hold.
  CertAndKey lasting = pki_.IssueServer("lasting", "localhost", "5005", 10000);
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  Result<std::shared_ptr<TlsServer>> server = TlsServer::Create({lasting.cert, lasting.key, ""});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const TlsCertificateInfo& cert = (*server)->certificate();
  EXPECT_EQ(cert.not_after_unix_s - cert.not_before_unix_s, int64_t{10000} * 86400);
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LE(std::abs(cert.not_before_unix_s - now_s), 86400) << cert.not_before;
  EXPECT_GE(std::stoi(cert.not_after.substr(0, 4)), 2053) << cert.not_after;
  EXPECT_EQ(cert.not_after.size(), 20u) << cert.not_after;  // "YYYY-MM-DDThh:mm:ssZ"
}

TEST_F(TlsServerTest, CurlTrustingTheCaGetsAnswersAndCurlWithoutItRefusesTheServer) {
  Start();
  CurlReply ok = RunCurl({"--cacert", pki_.ca_cert, "--data-binary", "hello", Https("/v1/events")});
  EXPECT_EQ(ok.exit_code, 0);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, "POST /v1/events body-bytes 5");

  // Also by name: the certificate names localhost as well as 127.0.0.1.
  CurlReply by_name =
      RunCurl({"--cacert", pki_.ca_cert, "--resolve", "localhost:" + std::to_string(port_) + ":127.0.0.1",
               "https://localhost:" + std::to_string(port_) + "/by-name"});
  EXPECT_EQ(by_name.status, 200);

  CurlReply untrusted = RunCurl({Https("/v1/events")});
  EXPECT_EQ(untrusted.exit_code, 60);  // CURLE_PEER_FAILED_VERIFICATION
  EXPECT_EQ(untrusted.status, 0);

  // TLS 1.0 and 1.1 are refused by the server (the client is told to
  // allow them).
  const uint64_t failures_before = tls_->Stats().handshake_failures;
  CurlReply old_protocol = RunCurl(
      {"--cacert", pki_.ca_cert, "--tlsv1.0", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0", Https("/")});
  EXPECT_NE(old_protocol.exit_code, 0);
  EXPECT_EQ(old_protocol.status, 0);
  EXPECT_TRUE(WaitFor([&] { return tls_->Stats().handshake_failures > failures_before; }));

  EXPECT_EQ(server_->Stats().requests, 2u);
  EXPECT_EQ(tls_->Stats().handshakes, 2u);
  EXPECT_FALSE(tls_->requires_client_certificate());
  EXPECT_EQ(tls_->certificate().serial, "10:01");
  EXPECT_EQ(tls_->certificate().subject, "CN=localhost");
}

TEST_F(TlsServerTest, MutualTlsAcceptsOnlyClientCertificatesFromTheConfiguredCa) {
  Start({}, /*mtls=*/true);
  EXPECT_TRUE(tls_->requires_client_certificate());

  CurlReply none = RunCurl({"--cacert", pki_.ca_cert, Https("/none")});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_EQ(none.status, 0);

  CurlReply good =
      RunCurl({"--cacert", pki_.ca_cert, "--cert", pki_.client.cert, "--key", pki_.client.key, Https("/good")});
  EXPECT_EQ(good.exit_code, 0);
  EXPECT_EQ(good.status, 200);
  EXPECT_EQ(good.body, "GET /good body-bytes 0");

  CurlReply stranger = RunCurl(
      {"--cacert", pki_.ca_cert, "--cert", pki_.other_client.cert, "--key", pki_.other_client.key, Https("/stranger")});
  EXPECT_NE(stranger.exit_code, 0);
  EXPECT_EQ(stranger.status, 0);

  TlsTestClient held;
  ASSERT_EQ(held.Connect(port_, pki_.ca_cert, &pki_.client), "");
  ASSERT_TRUE(held.Write("GET /held HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(held.ReadResponse(), "GET /held body-bytes 0"));

  EXPECT_EQ(server_->Stats().requests, 2u);  // the refused ones never reached the handler
  EXPECT_TRUE(WaitFor([&] { return tls_->Stats().client_certificates_refused == 2u; }));
  EXPECT_GE(server_->Stats().handshake_failures, 2u);
}

TEST_F(TlsServerTest, PlainHttpOnTheTlsPortGetsAPlain400AndOthersAreServed) {
  Start();
  CurlReply plain = RunCurl({Http("/v1/health")});
  EXPECT_EQ(plain.exit_code, 0);
  EXPECT_EQ(plain.status, 400);
  EXPECT_TRUE(Contains(plain.body, "https://waystation.dev/problems/https-required")) << plain.body;

  int fd = ConnectLoopback(port_);
  ASSERT_GE(fd, 0);
  UniqueFd raw(fd);
  ASSERT_GT(send(raw.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, MSG_NOSIGNAL), 0);
  std::string got;
  EXPECT_TRUE(WaitClosed(raw.get(), &got));
  EXPECT_EQ(got.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << got;
  EXPECT_TRUE(Contains(got, "Connection: close")) << got;

  CurlReply ok = RunCurl({"--cacert", pki_.ca_cert, Https("/after")});
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(server_->Stats().requests, 1u);
}

TEST_F(TlsServerTest, StalledHandshakesAreCutOffWhileOthersAreServed) {
  // Long enough for curl's own handshake under an emulator, short enough to
  // see the stalled ones go.
  HttpServerOptions o;
  o.header_timeout_ms = 2000;
  Start(o);
  // One client connects and says nothing; another sends half a ClientHello:
  // a handshake record header announcing 512 bytes, then 10 of them.
  int silent_fd = ConnectLoopback(port_);
  int half_fd = ConnectLoopback(port_);
  ASSERT_GE(silent_fd, 0);
  ASSERT_GE(half_fd, 0);
  UniqueFd silent(silent_fd), half(half_fd);
  const unsigned char partial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0};
  ASSERT_EQ(send(half.get(), partial, sizeof partial, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof partial));

  CurlReply ok = RunCurl({"--cacert", pki_.ca_cert, Https("/meanwhile")});
  EXPECT_EQ(ok.status, 200);

  std::string silent_got, half_got;
  EXPECT_TRUE(WaitClosed(silent.get(), &silent_got));
  EXPECT_TRUE(WaitClosed(half.get(), &half_got));
  EXPECT_TRUE(silent_got.empty());
  EXPECT_TRUE(half_got.empty());
  EXPECT_TRUE(WaitFor([&] { return server_->Stats().timeouts >= 2u && server_->Stats().connections_open == 0; }));
}

TEST_F(TlsServerTest, ReloadGivesNewConnectionsTheNewCertificateAndOpenOnesKeepTheirs) {
  Start();
  TlsTestClient before;
  ASSERT_EQ(before.Connect(port_, pki_.ca_cert), "");
  EXPECT_EQ(before.PeerSerial(), "10:01");
  ASSERT_TRUE(before.Write("GET /one HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(before.ReadResponse(), "GET /one"));

  CertAndKey renewed = pki_.IssueServer("renewed", "localhost", "2002");
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  CopyOver(renewed.cert, files_.cert_file);
  CopyOver(renewed.key, files_.key_file);
  Status s = OnLoop([this] { return tls_->Reload(); });
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(tls_->Stats().reloads, 1u);

  EXPECT_TRUE(Contains(PresentedCertificate(port_, pki_.ca_cert), "Serial Number:2002"));
  TlsTestClient after;
  ASSERT_EQ(after.Connect(port_, pki_.ca_cert), "");
  EXPECT_EQ(after.PeerSerial(), "20:02");

  // The connection from before the reload carries on with its session.
  ASSERT_TRUE(before.Write("GET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(before.ReadResponse(), "GET /two"));
  EXPECT_EQ(before.PeerSerial(), "10:01");
}

TEST_F(TlsServerTest, ReloadWithBadFilesKeepsServingTheOldCertificate) {
  Start();
  const std::string good_cert = Slurp(files_.cert_file);
  std::ofstream(files_.cert_file, std::ios::trunc) << "-----BEGIN CERTIFICATE-----\nbroken\n";
  Status s = OnLoop([this] { return tls_->Reload(); });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("cert_file: cannot parse", 0), 0u) << s.message();
  EXPECT_TRUE(tls_->Stats().last_reload_failed);
  EXPECT_TRUE(Contains(PresentedCertificate(port_, pki_.ca_cert), "Serial Number:1001"));

  // A renewed certificate whose key was not replaced with it.
  CertAndKey renewed = pki_.IssueServer("renewed", "localhost", "2002");
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  CopyOver(renewed.cert, files_.cert_file);
  s = OnLoop([this] { return tls_->Reload(); });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("key_file: ", 0), 0u) << s.message();
  EXPECT_TRUE(Contains(s.message(), "does not belong")) << s.message();
  EXPECT_EQ(tls_->Stats().reload_failures, 2u);
  CurlReply ok = RunCurl({"--cacert", pki_.ca_cert, Https("/still")});
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(tls_->certificate().serial, "10:01");

  CopyOver(renewed.key, files_.key_file);
  s = OnLoop([this] { return tls_->Reload(); });
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(tls_->Stats().last_reload_failed);
  EXPECT_TRUE(Contains(PresentedCertificate(port_, pki_.ca_cert), "Serial Number:2002"));
  EXPECT_FALSE(good_cert.empty());
}

TEST_F(TlsServerTest, PipelinedRequestsAndLargeBodiesCrossTlsIntact) {
  HttpServerOptions o;
  o.max_body_bytes = size_t{4} * 1024 * 1024;
  Start(o);
  TlsTestClient c;
  ASSERT_EQ(c.Connect(port_, pki_.ca_cert), "");
  ASSERT_TRUE(
      c.Write("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /big HTTP/1.1\r\nHost: x\r\n\r\n"
              "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"));
  EXPECT_TRUE(Contains(c.ReadResponse(), "GET /a body-bytes 0"));
  std::string big = c.ReadResponse();
  EXPECT_TRUE(Contains(big, "Content-Length: " + std::to_string(kBigBody))) << big.substr(0, 200);
  EXPECT_EQ(big.size() - (big.find("\r\n\r\n") + 4), kBigBody);
  EXPECT_TRUE(Contains(c.ReadResponse(), "POST /c body-bytes 3"));

  const std::string upload = dir_.File("upload.bin");
  std::ofstream(upload, std::ios::binary) << std::string(size_t{2} * 1024 * 1024, 'u');
  CurlReply r = RunCurl({"--cacert", pki_.ca_cert, "--data-binary", "@" + upload, Https("/upload")});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /upload body-bytes " + std::to_string(2 * 1024 * 1024));
}

TEST_F(TlsServerTest, OverMaxConnectionsATlsListenerClosesWithoutAPlainAnswer) {
  HttpServerOptions o;
  o.max_connections = 1;
  Start(o);
  TlsTestClient holder;
  ASSERT_EQ(holder.Connect(port_, pki_.ca_cert), "");
  ASSERT_TRUE(WaitFor([&] { return server_->Stats().connections_open == 1; }));

  int fd = ConnectLoopback(port_);
  ASSERT_GE(fd, 0);
  UniqueFd extra(fd);
  std::string got;
  EXPECT_TRUE(WaitClosed(extra.get(), &got));
  EXPECT_TRUE(got.empty()) << got;
  EXPECT_EQ(server_->Stats().connections_rejected, 1u);

  ASSERT_TRUE(holder.Write("GET /held HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(Contains(holder.ReadResponse(), "GET /held"));
}

}  // namespace
}  // namespace ws
