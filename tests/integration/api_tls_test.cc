// HTTPS and mTLS on the local API end to end: the real daemon (under the
// emulator in cross builds) with a plain and a TLS listener, certificates
// made by openssl at run time, curl as the producer. Covers check-config's
// TLS errors, 202 over HTTPS, client certificates, plain HTTP on the TLS
// port, and certificate reload on SIGHUP (good files and bad ones).
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/test_certs.h"
#include "tests/support/test_support.h"

namespace ws::testing {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

void CopyOver(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

// Runs `argv` with its stderr joined to stdout.
int RunJoined(const std::vector<std::string>& argv, std::string* out) {
  std::vector<std::string> shell = {"sh", "-c", "exec \"$@\" 2>&1", "sh"};
  shell.insert(shell.end(), argv.begin(), argv.end());
  return RunCommand(shell, out, 120000);
}

CurlReply Curl(const std::vector<std::string>& args) { return RunCurl(args, 20); }

class ApiTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    cert_ = dir_.File("api.crt");
    key_ = dir_.File("api.key");
    CopyOver(pki_.server.cert, cert_);
    CopyOver(pki_.server.key, key_);
    plain_port_ = FreeLoopbackPort();
    tls_port_ = FreeLoopbackPort();
  }

  // The TLS listen entry; `tls` is the inside of its "tls" object.
  std::string TlsEntry(const std::string& tls, const std::string& address = "") const {
    return R"({"address": ")" + (address.empty() ? "127.0.0.1:" + std::to_string(tls_port_) : address) +
           R"(", "tls": {)" + tls + "}}";
  }
  std::string Files(bool mtls) const {
    std::string f = R"("cert_file": ")" + cert_ + R"(", "key_file": ")" + key_ + "\"";
    if (mtls) f += R"(, "client_ca_file": ")" + pki_.ca_cert + "\"";
    return f;
  }

  // A configuration with a plain listener and `tls_entry`; the backbone
  // points at a port nobody listens on (events wait in the outbox).
  std::string WriteConfig(const std::string& tls_entry) {
    std::string path = dir_.File("waystation.json");
    std::ofstream f(path);
    f << R"({
  "node": { "id": "gw-tls", "site": "lab" },
  "storage": { "path": ")"
      << dir_.File("var/outbox.db") << R"(" },
  "api": { "listen": ["127.0.0.1:)"
      << plain_port_ << "\", " << tls_entry << R"(] },
  "backbone": { "endpoints": [ { "name": "nowhere", "host": "127.0.0.1", "port": )"
      << FreeLoopbackPort() << R"( } ] },
  "log": { "level": "info", "format": "text" }
})";
    return path;
  }

  void StartDaemon(bool mtls) {
    std::string config = WriteConfig(TlsEntry(Files(mtls)));
    daemon_ = std::make_unique<Subprocess>(DaemonArgv({"--config", config}), dir_.File("daemon.log"));
    ASSERT_TRUE(WaitUntil([&] { return Plain("/v1/health").status == 200 || !daemon_->running(); }, 60000));
    ASSERT_TRUE(daemon_->running()) << Slurp(dir_.File("daemon.log"));
  }

  std::string Https(const std::string& path) const { return "https://127.0.0.1:" + std::to_string(tls_port_) + path; }
  CurlReply Plain(const std::string& path) { return Curl({"http://127.0.0.1:" + std::to_string(plain_port_) + path}); }
  CurlReply PostEvent(std::vector<std::string> tls_args, const std::string& id) {
    tls_args.insert(tls_args.end(),
                    {"-H", "Content-Type: application/cloudevents+json", "--data-binary",
                     R"({"specversion":"1.0","id":")" + id + R"(","source":"/line/1","type":"com.acme.reading"})",
                     Https("/v1/events")});
    return Curl(tls_args);
  }
  // What curl was shown by the TLS listener ("Serial Number:1001" ...).
  std::string PresentedCertificate() {
    std::string out;
    RunCommand({"curl", "-sS", "--noproxy", "*", "--max-time", "20", "--cacert", pki_.ca_cert, "-o", "/dev/null", "-w",
                "%{certs}", Https("/v1/health")},
               &out, 30000);
    return out;
  }
  std::string Log() const { return Slurp(dir_.File("daemon.log")); }

  TempDir dir_;
  TestPki pki_{dir_.path()};
  std::string cert_;
  std::string key_;
  uint16_t plain_port_ = 0;
  uint16_t tls_port_ = 0;
  std::unique_ptr<Subprocess> daemon_;
};

TEST_F(ApiTlsTest, CheckConfigNamesTheKeyOfEveryTlsProblemAndNeverPrintsTheKey) {
  std::string out;
  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(TlsEntry(Files(true)))}), &out), 0) << out;
  EXPECT_TRUE(Contains(out, ": ok")) << out;

  std::string missing = TlsEntry(R"("cert_file": ")" + dir_.File("absent.crt") + R"(", "key_file": ")" + key_ + "\"");
  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(missing)}), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls.cert_file: cannot read")) << out;
  EXPECT_TRUE(Contains(out, "absent.crt")) << out;

  // The client's key with the server's certificate.
  std::string mismatch = TlsEntry(R"("cert_file": ")" + cert_ + R"(", "key_file": ")" + pki_.client.key + "\"");
  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(mismatch)}), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls.key_file: ")) << out;
  EXPECT_TRUE(Contains(out, "does not belong to the certificate")) << out;
  // No line of the key file (PEM armour aside) appears in the output.
  std::string key_text = Slurp(pki_.client.key);
  ASSERT_FALSE(key_text.empty());
  size_t line_start = key_text.find('\n') + 1;
  EXPECT_FALSE(Contains(out, key_text.substr(line_start, 40))) << out;

  std::string garbage_ca = dir_.File("garbage-ca.crt");
  std::ofstream(garbage_ca) << "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  std::string bad_ca = TlsEntry(Files(false) + R"(, "client_ca_file": ")" + garbage_ca + "\"");
  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(bad_ca)}), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls.client_ca_file: cannot parse")) << out;

  EXPECT_EQ(
      RunJoined(DaemonArgv({"check-config", WriteConfig(TlsEntry(Files(false), "unix:" + dir_.File("s")))}), &out), 1)
      << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls: Unix-socket listeners are plain")) << out;

  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(TlsEntry(R"("key_file": ")" + key_ + "\""))}), &out), 1)
      << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls.cert_file: required")) << out;

  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(TlsEntry(Files(false) + R"(, "ca": "x")"))}), &out), 1)
      << out;
  EXPECT_TRUE(Contains(out, "api.listen[1].tls.ca: unknown key")) << out;

  // TLS does not replace tokens: a listener off loopback still needs them.
  EXPECT_EQ(RunJoined(DaemonArgv({"check-config", WriteConfig(TlsEntry(Files(true), "0.0.0.0:8443"))}), &out), 1)
      << out;
  EXPECT_TRUE(Contains(out, "api.listen[1]: \"0.0.0.0:8443\" is not a loopback or Unix address")) << out;
}

TEST_F(ApiTlsTest, HttpsPostIs202AndUntrustedOrPlainClientsAreRefused) {
  StartDaemon(/*mtls=*/false);
  CurlReply accepted = PostEvent({"--cacert", pki_.ca_cert}, "tls-1");
  EXPECT_EQ(accepted.exit_code, 0);
  EXPECT_EQ(accepted.status, 202) << accepted.body;
  EXPECT_TRUE(Contains(accepted.body, "\"id\":\"tls-1\"")) << accepted.body;

  CurlReply untrusted = PostEvent({}, "tls-2");
  EXPECT_EQ(untrusted.exit_code, 60);  // the server's certificate could not be verified
  EXPECT_EQ(untrusted.status, 0);

  CurlReply plain = Curl({"http://127.0.0.1:" + std::to_string(tls_port_) + "/v1/health"});
  EXPECT_EQ(plain.status, 400);
  EXPECT_TRUE(Contains(plain.body, "/problems/https-required")) << plain.body;

  // Both listeners keep serving.
  EXPECT_EQ(Plain("/v1/health").status, 200);
  CurlReply again = PostEvent({"--cacert", pki_.ca_cert}, "tls-3");
  EXPECT_EQ(again.status, 202) << again.body;
  CurlReply metrics = Plain("/metrics");
  EXPECT_TRUE(Contains(metrics.body, "waystation_api_events_accepted_total 2\n")) << metrics.body;
  EXPECT_TRUE(Contains(
      metrics.body, "waystation_api_tls_handshakes_total{listener=\"127.0.0.1:" + std::to_string(tls_port_) + "\"} "))
      << metrics.body;
  EXPECT_TRUE(Contains(Log(), "HTTPS listener")) << Log();
}

TEST_F(ApiTlsTest, MutualTlsNeedsAClientCertificateFromTheConfiguredCa) {
  StartDaemon(/*mtls=*/true);
  CurlReply none = PostEvent({"--cacert", pki_.ca_cert}, "m-1");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_EQ(none.status, 0);

  CurlReply good = PostEvent({"--cacert", pki_.ca_cert, "--cert", pki_.client.cert, "--key", pki_.client.key}, "m-2");
  EXPECT_EQ(good.status, 202) << good.body;

  CurlReply stranger =
      PostEvent({"--cacert", pki_.ca_cert, "--cert", pki_.other_client.cert, "--key", pki_.other_client.key}, "m-3");
  EXPECT_NE(stranger.exit_code, 0);
  EXPECT_EQ(stranger.status, 0);

  CurlReply metrics = Plain("/metrics");
  EXPECT_TRUE(Contains(metrics.body, "waystation_api_tls_client_certificates_refused_total{listener=\"127.0.0.1:" +
                                         std::to_string(tls_port_) + "\"} 2\n"))
      << metrics.body;
  EXPECT_TRUE(Contains(metrics.body, "waystation_api_events_accepted_total 1\n")) << metrics.body;
}

TEST_F(ApiTlsTest, SighupReloadsTheCertificateAndBadFilesKeepTheOldOne) {
  StartDaemon(/*mtls=*/false);
  ASSERT_TRUE(Contains(PresentedCertificate(), "Serial Number:1001"));

  CertAndKey renewed = pki_.IssueServer("renewed", "localhost", "2002");
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  CopyOver(renewed.cert, cert_);
  CopyOver(renewed.key, key_);
  ASSERT_TRUE(daemon_->Signal(SIGHUP));
  EXPECT_TRUE(WaitUntil([&] { return Contains(PresentedCertificate(), "Serial Number:2002"); }, 30000))
      << PresentedCertificate() << Log();
  EXPECT_EQ(PostEvent({"--cacert", pki_.ca_cert}, "after-reload").status, 202);

  // A broken certificate file: the reload is refused and logged, the
  // listener keeps the certificate it has, and the alarm is raised.
  std::ofstream(cert_, std::ios::trunc) << "-----BEGIN CERTIFICATE-----\nbroken\n";
  ASSERT_TRUE(daemon_->Signal(SIGHUP));
  EXPECT_TRUE(WaitUntil([&] { return Contains(Log(), "TLS certificate reload failed"); }, 30000)) << Log();
  EXPECT_TRUE(Contains(Log(), "api.listen[1].tls.cert_file: cannot parse")) << Log();
  EXPECT_TRUE(Contains(PresentedCertificate(), "Serial Number:2002"));
  EXPECT_EQ(PostEvent({"--cacert", pki_.ca_cert}, "after-bad-reload").status, 202);
  CurlReply metrics = Plain("/metrics");
  const std::string label = "{listener=\"127.0.0.1:" + std::to_string(tls_port_) + "\"}";
  EXPECT_TRUE(Contains(metrics.body, "waystation_api_tls_reload_failed" + label + " 1\n")) << metrics.body;
  EXPECT_TRUE(Contains(Plain("/v1/status").body, "\"api_tls_reload_failed\"")) << Plain("/v1/status").body;

  // Fixed files clear the alarm at the next SIGHUP.
  CopyOver(renewed.cert, cert_);
  ASSERT_TRUE(daemon_->Signal(SIGHUP));
  EXPECT_TRUE(WaitUntil(
      [&] { return Contains(Plain("/metrics").body, "waystation_api_tls_reload_failed" + label + " 0\n"); }, 30000));
  EXPECT_FALSE(Contains(Plain("/v1/status").body, "api_tls_reload_failed"));

  // Nothing of the keys ever reached the log.
  for (const std::string& key_file : {pki_.server.key, renewed.key}) {
    std::string text = Slurp(key_file);
    size_t body = text.find('\n') + 1;
    EXPECT_FALSE(Contains(Log(), text.substr(body, 40)));
  }
}

}  // namespace
}  // namespace ws::testing
