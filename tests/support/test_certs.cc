#include "tests/support/test_certs.h"

#include <fstream>
#include <utility>

#include "tests/support/test_support.h"

namespace ws::testing {

TestPki::TestPki(std::string dir) : dir_(std::move(dir)) {
  ca_ = NewCa("ca", "Waystation Test CA");
  other_ca_ = NewCa("other-ca", "Unrelated Test CA");
  ca_cert = ca_.cert;
  other_ca_cert = other_ca_.cert;
  server = Issue("server", "localhost", "1001", ca_, true);
  client = Issue("client", "producer-1", "3001", ca_, false);
  other_client = Issue("other-client", "intruder", "4001", other_ca_, false);
}

CertAndKey TestPki::IssueServer(const std::string& name, const std::string& cn, const std::string& serial_hex,
                                int days) {
  return Issue(name, cn, serial_hex, ca_, true, days);
}

bool TestPki::Run(const std::string& step, const std::vector<std::string>& argv) {
  if (!error_.empty()) return false;
  // openssl's chatter goes to a log beside the files ($0 of the shell), not
  // into the test's output.
  const std::string log = dir_ + "/openssl.log";
  std::vector<std::string> shell = {"sh", "-c", "exec \"$@\" 2>>\"$0\"", log};
  shell.insert(shell.end(), argv.begin(), argv.end());
  std::string out;
  int rc = RunCommand(shell, &out, 60000);
  if (rc != 0) error_ = step + ": openssl exited with " + std::to_string(rc) + ": " + Slurp(log);
  return rc == 0;
}

CertAndKey TestPki::NewCa(const std::string& name, const std::string& cn) {
  CertAndKey ca{dir_ + "/" + name + ".crt", dir_ + "/" + name + ".key"};
  Run("CA " + name,
      {"openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", ca.key, "-out", ca.cert, "-days", "2", "-subj", "/CN=" + cn, "-set_serial", "1"});
  return ca;
}

CertAndKey TestPki::Issue(const std::string& name, const std::string& cn, const std::string& serial_hex,
                          const CertAndKey& ca, bool server_cert, int days) {
  CertAndKey out{dir_ + "/" + name + ".crt", dir_ + "/" + name + ".key"};
  const std::string csr = dir_ + "/" + name + ".csr";
  const std::string ext = dir_ + "/" + name + ".ext";
  {
    std::ofstream f(ext);
    f << "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
    if (server_cert) {
      f << "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n";
    } else {
      f << "extendedKeyUsage=clientAuth\n";
    }
  }
  Run("request " + name, {"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", out.key, "-out", csr, "-subj", "/CN=" + cn});
  Run("sign " + name, {"openssl", "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
                       "0x" + serial_hex, "-days", std::to_string(days), "-out", out.cert, "-extfile", ext});
  return out;
}

}  // namespace ws::testing
