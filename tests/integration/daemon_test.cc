// The walking skeleton end to end: a producer posts over a real socket, the
// daemon commits and answers 202, and a real subscriber on a real broker
// receives the event; the outbox drains; SIGTERM leaves a retained offline
// state; the CLI's --version and check-config answer as documented.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace ws::testing {
namespace {

using std::chrono::steady_clock;

class DaemonTest : public ::testing::Test {
 protected:
  // `endpoint_extra`: more keys for the endpoint (", \"username\": ..."); a
  // nonzero `port` names another broker than broker_.
  void WriteConfig(const std::string& protocol = "mqtt5", const std::string& endpoint_extra = "", uint16_t port = 0) {
    api_port_ = FreeLoopbackPort();
    config_ = dir_.File("waystation.json");
    std::ofstream f(config_);
    f << R"({
  "node": { "id": "gw-test", "site": "lab" },
  "storage": { "path": ")" << dir_.File("var/outbox.db") << R"(" },
  "api": { "listen": ["127.0.0.1:)" << api_port_ << R"(", "unix:)" << dir_.File("var/api.sock") << R"("] },
  "backbone": { "endpoints": [ { "name": "local", "host": "127.0.0.1", "port": )"
      << (port != 0 ? port : broker_.port()) << endpoint_extra << R"( } ],
                "protocol": ")" << protocol << R"(" },
  "log": { "level": "debug", "format": "text" }
})";
  }

  void StartDaemon() {
    daemon_ = std::make_unique<Subprocess>(DaemonArgv({"--config", config_}), dir_.File("daemon.log"));
    ASSERT_TRUE(WaitUntil([&] { return Curl({"-o", "/dev/null", Url("/v1/health")}) == 0 || !daemon_->running(); },
                          60000));
    ASSERT_TRUE(daemon_->running()) << Slurp(dir_.File("daemon.log"));
  }

  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(api_port_) + path;
  }

  int Curl(std::vector<std::string> args, std::string* out = nullptr) {
    std::vector<std::string> argv = {"curl", "-sS", "--max-time", "20"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, 30000);
  }

  // POSTs a structured event; returns the HTTP status and the body.
  int PostEvent(const std::string& json, std::string* body) {
    std::string out;
    int rc = Curl({"-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/cloudevents+json",
                   "--data-binary", json, Url("/v1/events")},
                  &out);
    if (rc != 0) return -rc;
    size_t nl = out.rfind('\n');
    *body = out.substr(0, nl);
    return std::stoi(out.substr(nl + 1));
  }

  std::unique_ptr<Subprocess> Subscribe(const std::string& topic, const std::string& file,
                                        const std::string& client_id, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {"mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(broker_.port()),
                                     "-V", "mqttv5", "-i", client_id, "-t", topic, "-F", "%t|%r|%P|%p"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto sub = std::make_unique<Subprocess>(argv, file);
    // The broker logs the subscriber's client id once it is connected.
    EXPECT_TRUE(WaitUntil([&] { return Slurp(broker_.log_path()).find(client_id) != std::string::npos; }, 10000));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // SUBSCRIBE follows CONNECT
    return sub;
  }

  // What a subscriber arriving now gets on the retained state topic ("" if
  // nothing within `wait_s`).
  std::string RetainedState(int wait_s) {
    std::string out;
    int rc = RunCommand({"mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(broker_.port()), "-t",
                         "waystation/lab/gw-test/state", "-C", "1", "-W", std::to_string(wait_s)},
                        &out);
    return rc == 0 ? out : "";
  }

  // Polls the retained state until it contains `word`; *last holds the last answer.
  bool WaitForState(const std::string& word, std::string* last) {
    return WaitUntil(
        [&] {
          *last = RetainedState(3);
          return last->find(word) != std::string::npos;
        },
        30000);
  }

  TempDir dir_;
  MosquittoBroker broker_;
  uint16_t api_port_ = 0;
  std::string config_;
  std::unique_ptr<Subprocess> daemon_;
};

TEST_F(DaemonTest, PostedEventArrivesAtTheBackboneAndLeavesTheOutbox) {
  ASSERT_TRUE(broker_.running());
  WriteConfig();
  auto sub = Subscribe("waystation/lab/gw-test/events/#", dir_.File("sub.out"), "ws-it-sub");
  StartDaemon();

  std::string body;
  int status = PostEvent(
      R"({"specversion":"1.0","id":"it-0001","source":"/line/3","type":"com.acme.reading",)"
      R"("traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","data":{"temp":21.5}})",
      &body);
  ASSERT_EQ(status, 202) << body << "\n" << Slurp(dir_.File("daemon.log"));
  EXPECT_NE(body.find("\"id\":\"it-0001\""), std::string::npos) << body;
  EXPECT_NE(body.find("\"sequence\":1"), std::string::npos) << body;

  ASSERT_TRUE(WaitUntil([&] { return Slurp(dir_.File("sub.out")).find("it-0001") != std::string::npos; }, 30000))
      << "subscriber saw: " << Slurp(dir_.File("sub.out")) << "\ndaemon log:\n" << Slurp(dir_.File("daemon.log"));
  std::string got = Slurp(dir_.File("sub.out"));
  EXPECT_NE(got.find("waystation/lab/gw-test/events/com.acme.reading|"), std::string::npos) << got;
  EXPECT_NE(got.find("type:com.acme.reading"), std::string::npos) << got;
  EXPECT_NE(got.find("traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), std::string::npos) << got;
  EXPECT_NE(got.find("{\"temp\":21.5}"), std::string::npos) << got;

  // Delivered means deleted: the backlog drains to zero.
  EXPECT_TRUE(WaitUntil(
      [&] {
        std::string st;
        return Curl({Url("/v1/status")}, &st) == 0 && st.find("\"normal\":{\"count\":0") != std::string::npos;
      },
      30000));
  std::string metrics;
  ASSERT_EQ(Curl({Url("/metrics")}, &metrics), 0);
  EXPECT_NE(metrics.find("waystation_store_removed_events_total{reason=\"delivered\"} 1"), std::string::npos)
      << metrics;

  // Bad input is refused with a problem document and writes nothing.
  status = PostEvent(R"({"specversion":"1.0","id":"bad","source":"/x"})", &body);
  EXPECT_EQ(status, 400) << body;
  EXPECT_NE(body.find("type"), std::string::npos) << body;
  std::string st;
  ASSERT_EQ(Curl({Url("/v1/status")}, &st), 0);
  EXPECT_NE(st.find("\"last_sequence\":1"), std::string::npos) << st;
}

TEST_F(DaemonTest, UnixSocketAndStructuredModeOnMqtt311) {
  WriteConfig("mqtt311");
  auto sub = Subscribe("waystation/lab/gw-test/events/#", dir_.File("sub.out"), "ws-it-sub311");
  StartDaemon();
  std::string out;
  ASSERT_EQ(Curl({"-w", "\n%{http_code}", "--unix-socket", dir_.File("var/api.sock"), "-X", "POST", "-H",
                  "Content-Type: application/cloudevents+json", "--data-binary",
                  R"({"specversion":"1.0","id":"unix-1","source":"/s","type":"com.acme.t","data":"hi"})",
                  "http://localhost/v1/events"},
                 &out),
            0);
  EXPECT_NE(out.find("\n202"), std::string::npos) << out;
  ASSERT_TRUE(WaitUntil([&] { return Slurp(dir_.File("sub.out")).find("unix-1") != std::string::npos; }, 30000))
      << Slurp(dir_.File("daemon.log"));
  // MQTT 3.1.1 has no properties: the whole event travels as CloudEvents JSON.
  std::string got = Slurp(dir_.File("sub.out"));
  EXPECT_NE(got.find("\"specversion\":\"1.0\""), std::string::npos) << got;
  EXPECT_NE(got.find("\"data\":\"hi\""), std::string::npos) << got;
}

TEST_F(DaemonTest, PresenceOnlineAtStartOfflineAfterSigterm) {
  WriteConfig();
  StartDaemon();
  std::string out;
  // Retained: a subscriber that arrives later still gets it.
  ASSERT_TRUE(WaitForState("online", &out)) << out << Slurp(dir_.File("daemon.log"));

  ASSERT_TRUE(daemon_->Signal(SIGTERM));
  EXPECT_EQ(daemon_->Wait(30000), 0) << Slurp(dir_.File("daemon.log"));
  out = RetainedState(5);
  EXPECT_NE(out.find("offline"), std::string::npos) << out;
}

TEST_F(DaemonTest, LastWillSaysOfflineWhenTheNodeIsKilled) {
  WriteConfig();
  StartDaemon();
  std::string out;
  ASSERT_TRUE(WaitForState("online", &out)) << out;
  daemon_->Kill();
  EXPECT_TRUE(WaitForState("offline", &out)) << out;
}

TEST_F(DaemonTest, StatusSaysWhyTheBrokerRefusesTheNodeUntilItsPasswordFileIsRight) {
  TempDir broker_dir;
  const std::string auth = PasswordOnlyBrokerConfig(broker_dir, "gw-test", "right-secret");
  ASSERT_FALSE(auth.empty());
  MosquittoBroker secured(auth);
  ASSERT_TRUE(secured.running()) << Slurp(secured.log_path());
  const std::string secret = dir_.File("backbone.pass");
  std::ofstream(secret) << "wrong-secret\n";
  std::filesystem::permissions(secret, std::filesystem::perms(0600));
  WriteConfig("mqtt5", R"(, "username": "gw-test", "password_file": ")" + secret + R"(")", secured.port());
  StartDaemon();
  std::string body;
  ASSERT_EQ(PostEvent(R"({"specversion":"1.0","id":"pw-1","source":"/x","type":"t.a","data":1})", &body), 202) << body;

  std::string st;
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Curl({Url("/v1/status")}, &st) == 0 &&
               st.find(R"("last_error":{"message":"the broker refused the connection: 0x87 Not authorized","at":")") !=
                   std::string::npos;
      },
      30000))
      << st;
  EXPECT_EQ(st.find(R"("connect_failures":0)"), std::string::npos) << st;
  EXPECT_NE(st.find(R"("normal":{"count":1)"), std::string::npos) << st;
  std::string metrics;
  ASSERT_EQ(Curl({Url("/metrics")}, &metrics), 0);
  EXPECT_NE(metrics.find("waystation_backbone_connect_failures_total "), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("waystation_backbone_connect_failures_total 0"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("waystation_backbone_on_primary 1"), std::string::npos) << metrics;

  std::ofstream(secret) << "right-secret\n";  // rotated: the next connect reads it
  ASSERT_TRUE(WaitUntil(
      [&] { return Curl({Url("/v1/status")}, &st) == 0 && st.find(R"("normal":{"count":0)") != std::string::npos; },
      60000))
      << st << Slurp(dir_.File("daemon.log"));
  EXPECT_NE(st.find(R"("state":"connected")"), std::string::npos) << st;
  EXPECT_NE(st.find(R"("on_primary":true)"), std::string::npos) << st;
  // The last error stays for the operator to read after the recovery.
  EXPECT_NE(st.find("0x87 Not authorized"), std::string::npos) << st;
  const std::string log = Slurp(dir_.File("daemon.log"));
  for (const std::string& text : {st, metrics, log}) {
    EXPECT_EQ(text.find("wrong-secret"), std::string::npos);
    EXPECT_EQ(text.find("right-secret"), std::string::npos);
  }
}

TEST(DaemonCli, VersionNamesTheLinkedLibraries) {
  std::string out;
  ASSERT_EQ(RunCommand(DaemonArgv({"--version"}), &out), 0);
  for (const char* want : {"waystation 0.", "commit ", "arch ", "sqlite 3.", "libmosquitto 2.", "mbedtls 2.28",
                           "cjson 1."}) {
    EXPECT_NE(out.find(want), std::string::npos) << want << " missing in:\n" << out;
  }
}

TEST(DaemonCli, CheckConfigExplainsEveryError) {
  TempDir dir;
  std::string good = SourceDir() + "/firmware/config/demo.json";
  std::string out;
  EXPECT_EQ(RunCommand(DaemonArgv({"check-config", good}), &out), 0) << out;

  std::string bad = dir.File("bad.json");
  std::ofstream(bad) << R"({"node":{"id":"a/b"},"storage":{"max_bytes":"big"},"colour":"red",
    "backbone":{"endpoints":[{"name":"x","host":"127.0.0.1","port":0}]}})";
  // stderr carries the reasons: capture it through a shell redirect.
  std::vector<std::string> argv = DaemonArgv({"check-config", bad});
  std::string cmd;
  for (const auto& a : argv) cmd += "'" + a + "' ";
  int rc = RunCommand({"sh", "-c", cmd + "2>&1"}, &out);
  EXPECT_EQ(rc, 1) << out;
  for (const char* want : {"node.id", "storage.max_bytes", "colour: unknown key", "backbone.endpoints[0].port"}) {
    EXPECT_NE(out.find(want), std::string::npos) << want << " missing in:\n" << out;
  }
  EXPECT_NE(RunCommand(DaemonArgv({"--bogus"}), &out), 0);
}

}  // namespace
}  // namespace ws::testing
