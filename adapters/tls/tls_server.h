// The server side of TLS on mbedTLS, as a TransportFactory for one listener
// of the HTTP server: TLS 1.2, forward-secret AEAD cipher suites only, and
// for mTLS a client certificate that must chain to the configured CAs. One
// TlsServer holds the credentials (certificate chain, private key, client
// CAs); each accepted connection gets a session that shares them. Reload()
// re-reads the files: new connections use the new credentials, connections
// already open keep the ones they started with. No mbedTLS type appears here.
//
// Secrets: the private key's contents never appear in a message; errors name
// the file's key ("key_file: ...") and its path.
//
// Threads: Create, Accept, Reload, certificate() and the sessions run on the
// event loop thread that serves the listener; Stats() from any thread.
// CheckTlsServerFiles is reentrant.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "platform/status.h"
#include "platform/transport.h"

namespace ws {

struct TlsServerFiles {
  std::string cert_file;       // PEM: the server's certificate, then any intermediate CAs
  std::string key_file;        // PEM or DER private key of that certificate, not passphrase-protected
  std::string client_ca_file;  // PEM CAs that sign client certificates; empty: none asked for (no mTLS)
};

// The server certificate in use (the first one of cert_file).
struct TlsCertificateInfo {
  std::string subject;     // "CN=localhost, O=..."
  std::string serial;      // hex bytes as "10:01"
  std::string not_before;  // RFC 3339, UTC: "2026-01-31T12:00:00Z"
  std::string not_after;
  int64_t not_before_unix_s = 0;
  int64_t not_after_unix_s = 0;
};

struct TlsServerStats {
  uint64_t handshakes = 0;                   // completed
  uint64_t handshake_failures = 0;           // every other outcome, refused client certificates included
  uint64_t client_certificates_refused = 0;  // mTLS: none sent, or not signed by a client CA
  uint64_t reloads = 0;                      // successful Reload() calls
  uint64_t reload_failures = 0;              // Reload() calls that kept the old credentials
  bool last_reload_failed = false;
};

class TlsServer final : public TransportFactory {
 public:
  // Reads and checks the files (every certificate parses, the key belongs
  // to the certificate) and seeds a random generator for the sessions.
  static Result<std::shared_ptr<TlsServer>> Create(TlsServerFiles files);
  ~TlsServer() override;
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  Result<std::unique_ptr<Transport>> Accept(int fd) override;
  std::string Name() const override;

  // Reads the same files again. On success new connections use them; on
  // failure the old credentials stay in use and the error says why.
  Status Reload();

  const TlsCertificateInfo& certificate() const;
  bool requires_client_certificate() const;
  const TlsServerFiles& files() const;

  TlsServerStats Stats() const;

 private:
  class Impl;
  explicit TlsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Loads `files` as Create does, without keeping anything: for check-config.
Status CheckTlsServerFiles(const TlsServerFiles& files);

}  // namespace ws
