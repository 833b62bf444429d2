// Certificates for TLS tests, made at run time with the openssl command-line
// tool (Debian package openssl) in a folder the test owns; none is ever
// committed. EC P-256 keys: quick to make and to use, under the emulator too.
// Test-thread only.
#pragma once

#include <string>
#include <vector>

namespace ws::testing {

struct CertAndKey {
  std::string cert;  // PEM file paths
  std::string key;
};

class TestPki {
 public:
  // In `dir`: a CA; a server certificate for "localhost" and 127.0.0.1
  // signed by it (serial 1001); a client certificate signed by it (CN
  // producer-1); and a second, unrelated CA with a client certificate of its
  // own (CN intruder).
  explicit TestPki(std::string dir);

  // False if openssl failed (its messages went to stderr); error() says at
  // which step.
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  // Another server certificate from the first CA, for 127.0.0.1 and
  // localhost: `cn` as its common name, `serial_hex` ("2002") as serial,
  // valid from now for `days`.
  CertAndKey IssueServer(const std::string& name, const std::string& cn, const std::string& serial_hex, int days = 2);

  std::string ca_cert;
  std::string other_ca_cert;
  CertAndKey server;
  CertAndKey client;
  CertAndKey other_client;

 private:
  CertAndKey NewCa(const std::string& name, const std::string& cn);
  CertAndKey Issue(const std::string& name, const std::string& cn, const std::string& serial_hex, const CertAndKey& ca,
                   bool server_cert, int days = 2);
  bool Run(const std::string& step, const std::vector<std::string>& argv);

  std::string dir_;
  CertAndKey ca_;
  CertAndKey other_ca_;
  std::string error_;
};

}  // namespace ws::testing
