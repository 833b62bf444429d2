#include "adapters/tls/tls_server.h"

#include <fcntl.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <string_view>
#include <utility>

#include "adapters/tls/mbedtls_handles.h"
#include "platform/unique_fd.h"

namespace ws {
namespace {

using tls_internal::CtrDrbg;
using tls_internal::Entropy;
using tls_internal::PrivateKey;
using tls_internal::SslConfig;
using tls_internal::SslSession;
using tls_internal::X509Certs;

// Forward secrecy and authenticated encryption only; these cover both ECDSA
// and RSA server keys and everything curl, OpenSSL and browsers offer.
const int kCipherSuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    0,
};

// The one table where MBEDTLS_ERR_* codes of this adapter get a StatusCode;
// codes not listed take the caller's default.
struct CodeMapping {
  int rc;
  StatusCode code;
};
constexpr CodeMapping kCodeTable[] = {
    {MBEDTLS_ERR_NET_CONN_RESET, StatusCode::kUnavailable},
    {MBEDTLS_ERR_NET_SEND_FAILED, StatusCode::kUnavailable},
    {MBEDTLS_ERR_NET_RECV_FAILED, StatusCode::kUnavailable},
    {MBEDTLS_ERR_SSL_CONN_EOF, StatusCode::kUnavailable},
    {MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY, StatusCode::kUnavailable},
    {MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE, StatusCode::kPermissionDenied},
    {MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, StatusCode::kPermissionDenied},
    {MBEDTLS_ERR_SSL_ALLOC_FAILED, StatusCode::kResourceExhausted},
    {MBEDTLS_ERR_X509_ALLOC_FAILED, StatusCode::kResourceExhausted},
    {MBEDTLS_ERR_PK_ALLOC_FAILED, StatusCode::kResourceExhausted},
    {MBEDTLS_ERR_X509_FILE_IO_ERROR, StatusCode::kNotFound},
    {MBEDTLS_ERR_PK_FILE_IO_ERROR, StatusCode::kNotFound},
    {MBEDTLS_ERR_PK_PASSWORD_REQUIRED, StatusCode::kFailedPrecondition},
    {MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED, StatusCode::kUnavailable},
    {MBEDTLS_ERR_ENTROPY_SOURCE_FAILED, StatusCode::kUnavailable},
};

// `what` starts the message; mbedTLS's own description follows. Parse
// errors describe the format problem, never the bytes.
Status TlsStatus(int rc, std::string_view what, StatusCode fallback) {
  StatusCode code = fallback;
  for (const CodeMapping& m : kCodeTable) {
    if (m.rc == rc) code = m.code;
  }
  char buf[200];
  mbedtls_strerror(rc, buf, sizeof buf);
  std::string message(what);
  message += ": ";
  message += buf;
  return Status(code, std::move(message));
}

std::string Quoted(const std::string& path) { return "\"" + path + "\""; }

// A clear "No such file or directory" / "Permission denied" before mbedTLS,
// whose own file error does not tell them apart. O_NONBLOCK: a FIFO at the
// path must not hang the caller.
Status CheckReadableFile(std::string_view key, const std::string& path) {
  if (path.empty()) return InvalidArgument(std::string(key) + ": must name a file");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, std::string(key) + ": cannot read " + Quoted(path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, std::string(key) + ": cannot read " + Quoted(path));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(std::string(key) + ": " + Quoted(path) + " is not a regular file");
  return Status::Ok();
}

// Certificates of a PEM (or DER) file. Every certificate must parse: a
// bundle with an unreadable member is more likely a mistake than intended.
Status ParseCertificates(std::string_view key, const std::string& path, X509Certs* out) {
  WS_TRY(CheckReadableFile(key, path));
  int rc = mbedtls_x509_crt_parse_file(out->get(), path.c_str());
  if (rc < 0) {
    return TlsStatus(rc, std::string(key) + ": cannot parse the certificates in " + Quoted(path),
                     StatusCode::kInvalidArgument);
  }
  if (rc > 0) {
    return InvalidArgument(std::string(key) + ": " + std::to_string(rc) + " of the certificates in " + Quoted(path) +
                           " cannot be parsed");
  }
  return Status::Ok();
}

bool IsLeapYear(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// Leap years from year 1 up to, not including, `y` (y >= 1).
int64_t LeapYearsBefore(int64_t y) { return (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400; }

// Computed here rather than with timegm(): time_t has 32 bits on armhf, and
// certificates valid past 2038 are common.
int64_t UnixSeconds(const mbedtls_x509_time& t) {
  static constexpr int kDaysBeforeMonth[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
  if (t.year < 1 || t.mon < 1 || t.mon > 12) return 0;
  const int64_t year = t.year;
  int64_t days = 365 * (year - 1970) + (LeapYearsBefore(year) - LeapYearsBefore(1970));
  days += kDaysBeforeMonth[t.mon - 1] + (t.mon > 2 && IsLeapYear(year) ? 1 : 0) + (t.day - 1);
  return ((days * 24 + t.hour) * 60 + t.min) * 60 + t.sec;
}

std::string Rfc3339(const mbedtls_x509_time& t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", t.year, t.mon, t.day, t.hour, t.min, t.sec);
  return buf;
}

Result<TlsCertificateInfo> DescribeCertificate(const mbedtls_x509_crt& crt) {
  TlsCertificateInfo info;
  char buf[512];
  int rc = mbedtls_x509_dn_gets(buf, sizeof buf, &crt.subject);
  if (rc < 0) return TlsStatus(rc, "cert_file: cannot print the certificate's subject", StatusCode::kInvalidArgument);
  info.subject = buf;
  rc = mbedtls_x509_serial_gets(buf, sizeof buf, &crt.serial);
  if (rc < 0) return TlsStatus(rc, "cert_file: cannot print the certificate's serial", StatusCode::kInvalidArgument);
  info.serial = buf;
  info.not_before = Rfc3339(crt.valid_from);
  info.not_after = Rfc3339(crt.valid_to);
  info.not_before_unix_s = UnixSeconds(crt.valid_from);
  info.not_after_unix_s = UnixSeconds(crt.valid_to);
  return info;
}

// Random bits for the sessions' key exchanges.
struct Rng {
  Entropy entropy;
  CtrDrbg drbg;  // declared last: freed before the entropy it draws from
};

Result<std::shared_ptr<Rng>> MakeRng() {
  auto rng = std::make_shared<Rng>();
  static constexpr unsigned char kPersonalisation[] = "waystation-tls-server";
  int rc = mbedtls_ctr_drbg_seed(rng->drbg.get(), mbedtls_entropy_func, rng->entropy.get(), kPersonalisation,
                                 sizeof kPersonalisation - 1);
  if (rc != 0) return TlsStatus(rc, "seed the TLS random generator", StatusCode::kInternal);
  return rng;
}

// One generation of a listener's credentials and the mbedTLS configuration
// made from them. Immutable once built; sessions share it.
struct Credentials {
  explicit Credentials(std::shared_ptr<Rng> r) : rng(std::move(r)) {}

  // Members are destroyed in reverse: the configuration, which points at
  // everything above it, goes first.
  std::shared_ptr<Rng> rng;  // null for a check without sessions
  X509Certs chain;
  PrivateKey key;
  X509Certs client_cas;
  bool has_client_cas = false;
  SslConfig config;
  TlsCertificateInfo info;
};

Status LoadFiles(const TlsServerFiles& files, Credentials* c) {
  WS_TRY(ParseCertificates("cert_file", files.cert_file, &c->chain));
  WS_TRY(CheckReadableFile("key_file", files.key_file));
  int rc = mbedtls_pk_parse_keyfile(c->key.get(), files.key_file.c_str(), nullptr);
  if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED || rc == MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
    return FailedPrecondition("key_file: " + Quoted(files.key_file) +
                              " is protected by a passphrase; the node needs the key unencrypted, in a file only "
                              "its own user may read");
  }
  if (rc != 0) {
    return TlsStatus(rc, "key_file: cannot parse the private key in " + Quoted(files.key_file),
                     StatusCode::kInvalidArgument);
  }
  rc = mbedtls_pk_check_pair(&c->chain.get()->pk, c->key.get());
  if (rc != 0) {
    return InvalidArgument("key_file: the key in " + Quoted(files.key_file) +
                           " does not belong to the certificate in cert_file " + Quoted(files.cert_file));
  }
  if (!files.client_ca_file.empty()) {
    WS_TRY(ParseCertificates("client_ca_file", files.client_ca_file, &c->client_cas));
    c->has_client_cas = true;
  }
  WS_ASSIGN_OR_RETURN(c->info, DescribeCertificate(*c->chain.get()));
  return Status::Ok();
}

Status Configure(Credentials* c) {
  mbedtls_ssl_config* conf = c->config.get();
  int rc = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) return TlsStatus(rc, "TLS configuration", StatusCode::kInternal);
  mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);  // TLS 1.2
  mbedtls_ssl_conf_ciphersuites(conf, kCipherSuites);
  mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, c->rng->drbg.get());
#if defined(MBEDTLS_SSL_RENEGOTIATION)
  // A renegotiation would be a handshake inside a request; nobody needs it.
  mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
  rc = mbedtls_ssl_conf_own_cert(conf, c->chain.get(), c->key.get());
  if (rc != 0) return TlsStatus(rc, "cert_file: cannot use the certificate", StatusCode::kInvalidArgument);
  if (c->has_client_cas) {
    mbedtls_ssl_conf_ca_chain(conf, c->client_cas.get(), nullptr);
    mbedtls_ssl_conf_authmode(conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    mbedtls_ssl_conf_authmode(conf, MBEDTLS_SSL_VERIFY_NONE);
  }
  return Status::Ok();
}

Result<std::shared_ptr<const Credentials>> LoadCredentials(const TlsServerFiles& files, std::shared_ptr<Rng> rng) {
  auto c = std::make_shared<Credentials>(std::move(rng));
  WS_TRY(LoadFiles(files, c.get()));
  WS_TRY(Configure(c.get()));
  return std::shared_ptr<const Credentials>(std::move(c));
}

// Single writer (the loop thread), any reader.
class Counter {
 public:
  void Add() { v_.store(v_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  uint64_t Get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

struct Counters {
  Counter handshakes, handshake_failures, client_certificates_refused, reloads, reload_failures;
  std::atomic<bool> last_reload_failed{false};
};

// One connection's TLS session. Owns no descriptor: the server closes `fd`
// after destroying the session.
class TlsSession final : public Transport {
 public:
  TlsSession(std::shared_ptr<const Credentials> credentials, std::shared_ptr<Counters> counters, int fd)
      : credentials_(std::move(credentials)), counters_(std::move(counters)), fd_(fd) {}

  Status Setup() {
    int rc = mbedtls_ssl_setup(ssl_.get(), credentials_->config.get());
    if (rc != 0) return TlsStatus(rc, "TLS session", StatusCode::kInternal);
    mbedtls_ssl_set_bio(ssl_.get(), this, &TlsSession::SendCallback, &TlsSession::RecvCallback, nullptr);
    return Status::Ok();
  }

  Result<TransportWait> Handshake() override {
    if (!first_byte_seen_) {
      // A TLS connection opens with a handshake record (byte 22); an HTTP
      // request with its method's capital letters. Peeked, so mbedTLS still
      // reads it.
      char first = 0;
      ssize_t n = ::recv(fd_, &first, 1, MSG_PEEK);
      if (n < 0) {
        int err = errno;
        if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) return TransportWait::kReadable;
        return Failed(ErrnoStatus(err, "TLS handshake: recv"));
      }
      if (n == 0) return Failed(Unavailable("TLS handshake: the client closed the connection"));
      first_byte_seen_ = true;
      if (first >= 'A' && first <= 'Z') {
        plain_http_ = true;
        return Failed(InvalidArgument("TLS handshake: the client sent plain HTTP"));
      }
    }
    int rc = mbedtls_ssl_handshake(ssl_.get());
    if (rc == 0) {
      counters_->handshakes.Add();
      return TransportWait::kNone;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ) return TransportWait::kReadable;
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) return TransportWait::kWritable;
    if (rc == MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE) {
      counters_->client_certificates_refused.Add();
      // mbedTLS closes without telling the client why; TLS 1.2 names this
      // case a handshake_failure alert. Best effort: the connection ends
      // either way, so a socket that cannot take the alert now is no error.
      int alert = mbedtls_ssl_send_alert_message(ssl_.get(), MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                                 MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE);
      if (alert != 0 && alert != MBEDTLS_ERR_SSL_WANT_WRITE) {
        return Failed(SessionStatus(alert, "TLS handshake: client certificate refused: none was sent; alert"));
      }
      return Failed(TlsStatus(rc, "TLS handshake: client certificate refused: none was sent", StatusCode::kInternal));
    }
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
      counters_->client_certificates_refused.Add();
      char why[256];
      int len = mbedtls_x509_crt_verify_info(why, sizeof why, "", mbedtls_ssl_get_verify_result(ssl_.get()));
      std::string reason = len > 0 ? std::string(why, static_cast<size_t>(len)) : std::string("verification failed");
      while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
      std::replace(reason.begin(), reason.end(), '\n', ';');
      return Failed(Status(StatusCode::kPermissionDenied, "TLS handshake: client certificate refused: " + reason));
    }
    return Failed(SessionStatus(rc, "TLS handshake"));
  }

  Result<TransportIo> Read(char* data, size_t len) override {
    const size_t want = std::min<size_t>(len, INT_MAX);
    int rc = mbedtls_ssl_read(ssl_.get(), reinterpret_cast<unsigned char*>(data), want);
    if (rc > 0) return TransportIo{static_cast<size_t>(rc), TransportWait::kNone, false};
    // A client may just close the TCP connection after its last response
    // instead of sending close_notify: for HTTP with explicit lengths that is
    // an ordinary end.
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == MBEDTLS_ERR_SSL_CONN_EOF) {
      return TransportIo{0, TransportWait::kNone, true};
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ) return TransportIo{0, TransportWait::kReadable, false};
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) return TransportIo{0, TransportWait::kWritable, false};
    return SessionStatus(rc, "TLS read");
  }

  Result<TransportIo> Write(const char* data, size_t len) override {
    // mbedTLS seals a record on the first call; a call that waited must be
    // repeated with that record's length, or it reports more than it sent.
    size_t chunk = pending_write_;
    if (chunk == 0) {
      int max_payload = mbedtls_ssl_get_max_out_record_payload(ssl_.get());
      if (max_payload <= 0) return SessionStatus(max_payload, "TLS write");
      chunk = std::min(len, static_cast<size_t>(max_payload));
    } else if (chunk > len) {
      return Internal("TLS write resumed with fewer bytes than it was started with");
    }
    int rc = mbedtls_ssl_write(ssl_.get(), reinterpret_cast<const unsigned char*>(data), chunk);
    if (rc > 0) {
      pending_write_ = 0;
      return TransportIo{static_cast<size_t>(rc), TransportWait::kNone, false};
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ || rc == 0) {
      pending_write_ = chunk;
      return TransportIo{0, rc == MBEDTLS_ERR_SSL_WANT_READ ? TransportWait::kReadable : TransportWait::kWritable,
                         false};
    }
    return SessionStatus(rc, "TLS write");
  }

  bool HasBufferedInput() const override { return mbedtls_ssl_get_bytes_avail(ssl_.get()) > 0; }

  Status CloseWrite() override {
    // The alert is best effort: a full socket buffer leaves the client with
    // a plain end of stream, which HTTP with explicit lengths tolerates.
    int rc = first_byte_seen_ && !plain_http_ ? mbedtls_ssl_close_notify(ssl_.get()) : 0;
    if (::shutdown(fd_, SHUT_WR) != 0) return ErrnoStatus(errno, "shutdown");
    if (rc != 0 && rc != MBEDTLS_ERR_SSL_WANT_WRITE && rc != MBEDTLS_ERR_SSL_WANT_READ) {
      return SessionStatus(rc, "TLS close_notify");
    }
    return Status::Ok();
  }

  bool PeerSpokePlainHttp() const override { return plain_http_; }

 private:
  Status Failed(Status s) {
    counters_->handshake_failures.Add();
    return s;
  }

  // The socket's errno, when a callback saw one, says more than mbedTLS's
  // generic "send failed".
  Status SessionStatus(int rc, std::string_view what) {
    if (io_errno_ != 0) return ErrnoStatus(io_errno_, what);
    return TlsStatus(rc, what, StatusCode::kUnavailable);
  }

  static int SendCallback(void* ctx, const unsigned char* buf, size_t len) {
    auto* s = static_cast<TlsSession*>(ctx);
    const size_t want = std::min<size_t>(len, INT_MAX);
    for (;;) {
      ssize_t n = ::send(s->fd_, buf, want, MSG_NOSIGNAL);
      if (n >= 0) return static_cast<int>(n);
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_WRITE;
      s->io_errno_ = err;
      return err == EPIPE || err == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
    }
  }

  static int RecvCallback(void* ctx, unsigned char* buf, size_t len) {
    auto* s = static_cast<TlsSession*>(ctx);
    const size_t want = std::min<size_t>(len, INT_MAX);
    for (;;) {
      ssize_t n = ::recv(s->fd_, buf, want, 0);
      if (n >= 0) return static_cast<int>(n);  // 0: mbedTLS reports the end of the stream
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return MBEDTLS_ERR_SSL_WANT_READ;
      s->io_errno_ = err;
      return err == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
    }
  }

  // Declared before the session, which points into it: freed after it.
  std::shared_ptr<const Credentials> credentials_;
  std::shared_ptr<Counters> counters_;
  int fd_;
  SslSession ssl_;
  size_t pending_write_ = 0;
  bool first_byte_seen_ = false;
  bool plain_http_ = false;
  int io_errno_ = 0;
};

}  // namespace

class TlsServer::Impl {
 public:
  Impl(TlsServerFiles files, std::shared_ptr<Rng> rng, std::shared_ptr<const Credentials> current)
      : files_(std::move(files)),
        rng_(std::move(rng)),
        current_(std::move(current)),
        counters_(std::make_shared<Counters>()) {}

  Result<std::unique_ptr<Transport>> Accept(int fd) {
    auto session = std::make_unique<TlsSession>(current_, counters_, fd);
    WS_TRY(session->Setup());
    return std::unique_ptr<Transport>(std::move(session));
  }

  Status Reload() {
    Result<std::shared_ptr<const Credentials>> fresh = LoadCredentials(files_, rng_);
    if (!fresh.ok()) {
      counters_->reload_failures.Add();
      counters_->last_reload_failed.store(true, std::memory_order_relaxed);
      return fresh.status();
    }
    current_ = std::move(fresh).value();
    counters_->reloads.Add();
    counters_->last_reload_failed.store(false, std::memory_order_relaxed);
    return Status::Ok();
  }

  const TlsCertificateInfo& certificate() const { return current_->info; }
  bool requires_client_certificate() const { return current_->has_client_cas; }
  const TlsServerFiles& files() const { return files_; }

  TlsServerStats Stats() const {
    TlsServerStats s;
    s.handshakes = counters_->handshakes.Get();
    s.handshake_failures = counters_->handshake_failures.Get();
    s.client_certificates_refused = counters_->client_certificates_refused.Get();
    s.reloads = counters_->reloads.Get();
    s.reload_failures = counters_->reload_failures.Get();
    s.last_reload_failed = counters_->last_reload_failed.load(std::memory_order_relaxed);
    return s;
  }

 private:
  TlsServerFiles files_;
  std::shared_ptr<Rng> rng_;
  std::shared_ptr<const Credentials> current_;
  std::shared_ptr<Counters> counters_;
};

Result<std::shared_ptr<TlsServer>> TlsServer::Create(TlsServerFiles files) {
  WS_ASSIGN_OR_RETURN(std::shared_ptr<Rng> rng, MakeRng());
  WS_ASSIGN_OR_RETURN(std::shared_ptr<const Credentials> credentials, LoadCredentials(files, rng));
  auto impl = std::make_unique<Impl>(std::move(files), std::move(rng), std::move(credentials));
  return std::shared_ptr<TlsServer>(new TlsServer(std::move(impl)));
}

TlsServer::TlsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsServer::~TlsServer() = default;

Result<std::unique_ptr<Transport>> TlsServer::Accept(int fd) { return impl_->Accept(fd); }
std::string TlsServer::Name() const { return "tls"; }
Status TlsServer::Reload() { return impl_->Reload(); }
const TlsCertificateInfo& TlsServer::certificate() const { return impl_->certificate(); }
bool TlsServer::requires_client_certificate() const { return impl_->requires_client_certificate(); }
const TlsServerFiles& TlsServer::files() const { return impl_->files(); }
TlsServerStats TlsServer::Stats() const { return impl_->Stats(); }

Status CheckTlsServerFiles(const TlsServerFiles& files) {
  Credentials c(nullptr);
  return LoadFiles(files, &c);
}

}  // namespace ws
