#include <gtest/gtest.h>

#include <fstream>

#include "adapters/json/json_codec.h"
#include "tests/support/test_support.h"

namespace ws {
namespace {

bool Contains(const std::vector<std::string>& errors, const std::string& needle) {
  for (const auto& e : errors) {
    if (e.find(needle) != std::string::npos) return true;
  }
  return false;
}

constexpr char kDesignExample[] = R"({
  "node":    { "id": "gw-0001", "site": "plant-7" },
  "storage": { "path": "var/outbox.db", "max_bytes": 268435456, "retain_delivered_s": 0 },
  "api":     { "listen": ["127.0.0.1:8080", "unix:var/api.sock"],
               "tokens": [ { "name": "line-3", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                             "allow_types": ["com.acme.*"], "rate_per_s": 500, "burst": 1000 } ] },
  "backbone": {
    "endpoints": [ { "name": "eu-west",    "host": "127.0.0.1", "port": 1883 },
                   { "name": "eu-central", "host": "127.0.0.1", "port": 1884 } ],
    "protocol": "mqtt5",
    "topic_prefix": "waystation/{site}/{node}"
  },
  "routes":  [ { "match_type": "com.acme.order.*", "topic": "{prefix}/orders/{type}", "priority": "high",
                 "ttl_s": 604800 } ],
  "management": { "enabled": true, "require_signed_commands": false },
  "log":     { "level": "info", "format": "json" }
})";

TEST(ConfigParser, TheDesignExampleIsValid) {
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(kDesignExample, &c, &errors)) << (errors.empty() ? "" : errors.front());
  EXPECT_EQ(c.node.site, "plant-7");
  EXPECT_EQ(c.backbone.endpoints.size(), 2u);
  EXPECT_EQ(c.backbone.endpoints[1].port, 1884);
  EXPECT_TRUE(c.backbone.endpoints[1].retain);
  EXPECT_EQ(c.api.tokens[0].allow_types[0], "com.acme.*");
  EXPECT_EQ(c.routes[0].priority, Priority::kHigh);
  EXPECT_EQ(c.routes[0].ttl_s, 604800);
  EXPECT_EQ(ExpandTopicPrefix(c), "waystation/plant-7/gw-0001");
}

TEST(ConfigParser, UnknownKeysAndWrongTypesAreAllReported) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig(R"({"node":{"id":5,"zone":"x"},"storage":{"max_bytes":-1},"extra":1,
      "backbone":{"endpoints":[{"name":"a","host":"h","port":70000,"retain":"no"}],"protocol":"mqtt4"},
      "routes":[{"match_type":"x","topic":"t","priority":"urgent"}],
      "management":{"enabled":"yes"}})",
                           &c, &errors));
  for (const char* want : {"node.id: expected a string", "node.zone: unknown key", "storage.max_bytes: out of range",
                           "extra: unknown key", "backbone.endpoints[0].port: out of range",
                           "backbone.endpoints[0].retain: expected true or false",
                           "backbone.protocol: must be", "routes[0].priority: must be one of",
                           "management.enabled: expected true or false"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
}

// 2^63 is the double nearest to INT64_MAX: it must be refused as out of
// range, not converted (undefined behaviour, INT64_MIN on x86).
TEST(ConfigParser, WholeNumbersJustPastTheTypesRangeAreOutOfRange) {
  for (const char* json : {R"({"routes":[{"match_type":"x","ttl_s":9223372036854775808}]})",
                           R"({"backbone":{"reconnect_min_ms":9223372036854775807}})",
                           R"({"backbone":{"reconnect_min_ms":-9223372036854777856}})",
                           R"({"backbone":{"keepalive_s":4294967296}})"}) {
    Config c;
    std::vector<std::string> errors;
    EXPECT_FALSE(ParseConfig(json, &c, &errors)) << json;
    EXPECT_TRUE(Contains(errors, "out of range")) << json << ": " << (errors.empty() ? "" : errors.front());
  }
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}],
      "keepalive_s":4294967295}})",
                          &c, &errors) ||
              Contains(errors, "backbone.keepalive_s: must be between"))
      << (errors.empty() ? "" : errors.front());
  EXPECT_FALSE(Contains(errors, "out of range"));
}

TEST(ConfigParser, AnEndpointMaySendItsPresenceUnretained) {
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883},
      {"name":"b","host":"127.0.0.1","port":1884,"retain":false}]}})",
                          &c, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_TRUE(c.backbone.endpoints[0].retain);
  EXPECT_FALSE(c.backbone.endpoints[1].retain);
}

TEST(ConfigParser, NotJsonAndNotAnObject) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig("{", &c, &errors));
  EXPECT_TRUE(Contains(errors, "not valid JSON"));
  errors.clear();
  EXPECT_FALSE(ParseConfig("[]", &c, &errors));
  EXPECT_TRUE(Contains(errors, "expected an object"));
}

TEST(ConfigParser, NonLocalListenerWithoutTokensIsRefused) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig(R"({"api":{"listen":["0.0.0.0:8080"]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                           &c, &errors));
  EXPECT_TRUE(Contains(errors, "api.listen[0]")) << (errors.empty() ? "" : errors.front());
  errors.clear();
  Config d;
  EXPECT_TRUE(ParseConfig(R"({"api":{"listen":["[::1]:8080","localhost:9","unix:/run/x.sock"]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                          &d, &errors))
      << (errors.empty() ? "" : errors.front());
}

TEST(ConfigParser, ListenEntriesMayBeObjectsWithTls) {
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"api":{"listen":["127.0.0.1:8080",
        {"address":"127.0.0.1:8443","tls":{"cert_file":"/etc/ws/api.crt","key_file":"/etc/ws/api.key",
                                           "client_ca_file":"/etc/ws/producers-ca.crt"}},
        {"address":"unix:var/api.sock"}]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                          &c, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_EQ(c.api.listen, (std::vector<std::string>{"127.0.0.1:8080", "127.0.0.1:8443", "unix:var/api.sock"}));
  EXPECT_EQ(ListenTls(c.api, 0), nullptr);
  ASSERT_NE(ListenTls(c.api, 1), nullptr);
  EXPECT_EQ(ListenTls(c.api, 1)->cert_file, "/etc/ws/api.crt");
  EXPECT_EQ(ListenTls(c.api, 1)->key_file, "/etc/ws/api.key");
  EXPECT_EQ(ListenTls(c.api, 1)->client_ca_file, "/etc/ws/producers-ca.crt");
  EXPECT_EQ(ListenTls(c.api, 2), nullptr);

  // Plain strings only: nothing TLS-related is recorded, as by default.
  Config plain;
  ASSERT_TRUE(ParseConfig(R"({"api":{"listen":["127.0.0.1:8080",{"address":"[::1]:8080"}]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                          &plain, &errors));
  EXPECT_TRUE(plain.api.listen_tls.empty());

  Config bad;
  errors.clear();
  EXPECT_FALSE(ParseConfig(R"({"api":{"listen":[7,{"tls":{}},{"address":"127.0.0.1:1","port":2},
        {"address":"127.0.0.1:3","tls":{"cert":"x"}}]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                           &bad, &errors));
  EXPECT_TRUE(Contains(errors, "api.listen[0]: expected")) << (errors.empty() ? "" : errors.front());
  EXPECT_TRUE(Contains(errors, "api.listen[1].address: required"));
  EXPECT_TRUE(Contains(errors, "api.listen[2].port: unknown key"));
  EXPECT_TRUE(Contains(errors, "api.listen[3].tls.cert: unknown key"));
}

TEST(ConfigParser, ApiPolicyKeys) {
  Config defaults;
  EXPECT_EQ(defaults.api.anonymous_rate_per_s, 0);
  EXPECT_EQ(defaults.api.anonymous_burst, 0);
  EXPECT_EQ(defaults.api.idempotency_ttl_s, 86400);
  EXPECT_EQ(defaults.api.idempotency_max_keys, 100000u);

  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"api":{"anonymous_rate_per_s":2.5,"anonymous_burst":5,"idempotency_ttl_s":600,
      "idempotency_max_keys":50,"tokens":[{"name":"ops","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
      "admin":true}]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                          &c, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_EQ(c.api.anonymous_rate_per_s, 2.5);
  EXPECT_EQ(c.api.anonymous_burst, 5);
  EXPECT_EQ(c.api.idempotency_ttl_s, 600);
  EXPECT_EQ(c.api.idempotency_max_keys, 50u);
  EXPECT_TRUE(c.api.tokens[0].admin);
}

TEST(ConfigParser, ApiPolicyValuesOutOfRangeAreNamed) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig(R"({"api":{"anonymous_rate_per_s":-1,"anonymous_burst":0.5,"idempotency_ttl_s":0,
      "idempotency_max_keys":0,"tokens":[
        {"name":"a","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","burst":0.2,"admin":"yes"},
        {"name":"a","sha256":"0f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                           &c, &errors));
  for (const char* want : {"api.anonymous_rate_per_s: must be >= 0", "api.anonymous_burst: must be 0",
                           "api.idempotency_ttl_s: must be between", "api.idempotency_max_keys: must be between",
                           "api.tokens[0].burst: must be 0", "api.tokens[0].admin: expected true or false",
                           "api.tokens[1].name: \"a\" is used twice"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
}

TEST(ConfigParser, StorageClassLimits) {
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"storage":{"max_bytes":67108864,"control_reserve_bytes":2097152,
      "wal_checkpoint_bytes":8388608,"classes":{
      "bulk":{"max_bytes":8388608,"max_count":100000,"max_age_s":86400,"overflow":"drop_oldest"},
      "normal":{"max_count":500000},
      "high":{"overflow":"drop_oldest"}}},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                          &c, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_EQ(c.storage.control_reserve_bytes, 2097152u);
  EXPECT_EQ(c.storage.wal_checkpoint_bytes, 8388608u);
  const ClassLimits& bulk = c.storage.classes[static_cast<size_t>(Priority::kBulk)];
  EXPECT_EQ(bulk.max_bytes, 8388608u);
  EXPECT_EQ(bulk.max_count, 100000u);
  EXPECT_EQ(bulk.max_age_s, 86400);
  EXPECT_EQ(bulk.overflow, OverflowPolicy::kDropOldest);
  const ClassLimits& normal = c.storage.classes[static_cast<size_t>(Priority::kNormal)];
  EXPECT_EQ(normal.max_count, 500000u);
  EXPECT_EQ(normal.max_bytes, 0u);
  EXPECT_EQ(normal.overflow, OverflowPolicy::kRejectNew);  // the default where not given
  EXPECT_EQ(c.storage.classes[static_cast<size_t>(Priority::kHigh)].overflow, OverflowPolicy::kDropOldest);
  EXPECT_EQ(c.storage.classes[static_cast<size_t>(Priority::kControl)], DefaultClassLimits(Priority::kControl));
}

TEST(ConfigParser, StorageClassErrorsNameTheKey) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig(R"({"storage":{"max_bytes":2097152,"control_reserve_bytes":1048577,"classes":{
      "urgent":{},
      "bulk":{"overflow":"drop_newest","max_count":-1,"colour":"red"},
      "normal":{"max_bytes":4194304,"max_age_s":-5},
      "high":[]}},
      "backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":1883}]}})",
                           &c, &errors));
  for (const char* want : {"storage.classes.urgent: unknown class", "storage.classes.bulk.overflow: must be",
                           "storage.classes.bulk.max_count: out of range", "storage.classes.bulk.colour: unknown key",
                           "storage.classes.normal.max_bytes: must not exceed storage.max_bytes",
                           "storage.classes.normal.max_age_s: must be between",
                           "storage.classes.high: expected an object",
                           "storage.control_reserve_bytes: must be at most half"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
}

// --- backbone section ---

TEST(ConfigParser, BackboneTlsReconnectAndReturnKeys) {
  testing::TempDir dir;
  std::ofstream(dir.File("ca.pem")) << "ca";
  std::ofstream(dir.File("gw.crt")) << "cert";
  std::ofstream(dir.File("gw.key")) << "key";
  Config defaults;
  EXPECT_EQ(defaults.backbone.reconnect_min_ms, 200);
  EXPECT_EQ(defaults.backbone.reconnect_max_ms, 30000);
  EXPECT_EQ(defaults.backbone.return_to_primary_s, 300);
  EXPECT_EQ(defaults.backbone.ack_timeout_s, 60);

  Config c;
  std::vector<std::string> errors;
  const std::string json = R"({"backbone":{"endpoints":[
      {"name":"eu-west","host":"127.0.0.1","port":8883,
       "tls":{"ca_file":")" + dir.File("ca.pem") + R"(","cert_file":")" + dir.File("gw.crt") +
                           R"(","key_file":")" + dir.File("gw.key") + R"(","alpn":"mqtt",
              "verify_hostname":false,"server_name":"127.0.0.1"}},
      {"name":"eu-central","host":"127.0.0.1","port":1884}],
    "reconnect_min_ms":100,"reconnect_max_ms":5000,"return_to_primary_s":60,"ack_timeout_s":0,
    "max_bytes_per_s":250000}})";
  ASSERT_TRUE(ParseConfig(json, &c, &errors)) << (errors.empty() ? "" : errors.front());
  const EndpointTlsConfig& tls = c.backbone.endpoints[0].tls;
  EXPECT_TRUE(tls.enabled);
  EXPECT_EQ(tls.ca_file, dir.File("ca.pem"));
  EXPECT_EQ(tls.cert_file, dir.File("gw.crt"));
  EXPECT_EQ(tls.key_file, dir.File("gw.key"));
  EXPECT_EQ(tls.alpn, "mqtt");
  EXPECT_FALSE(tls.verify_hostname);
  EXPECT_FALSE(c.backbone.endpoints[1].tls.enabled);
  EXPECT_EQ(c.backbone.reconnect_min_ms, 100);
  EXPECT_EQ(c.backbone.reconnect_max_ms, 5000);
  EXPECT_EQ(c.backbone.return_to_primary_s, 60);
  EXPECT_EQ(c.backbone.ack_timeout_s, 0);
  EXPECT_EQ(c.backbone.max_bytes_per_s, 250000);
  EXPECT_EQ(defaults.backbone.max_bytes_per_s, 0);

  // An empty "tls" object: TLS with the system's CAs, host name checked.
  Config d;
  errors.clear();
  ASSERT_TRUE(ParseConfig(R"({"backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":8883,"tls":{}}]}})",
                          &d, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_TRUE(d.backbone.endpoints[0].tls.enabled);
  EXPECT_TRUE(d.backbone.endpoints[0].tls.verify_hostname);
  EXPECT_TRUE(d.backbone.endpoints[0].tls.ca_file.empty());
}

TEST(ConfigParser, EndpointCredentialsAreAUserNameAndAPasswordFileThatIsCheckedButNeverQuoted) {
  testing::TempDir dir;
  std::ofstream(dir.File("pw")) << "hunter2-secret\n";
  Config c;
  std::vector<std::string> errors;
  ASSERT_TRUE(ParseConfig(R"({"backbone":{"endpoints":[{"name":"a","host":"127.0.0.1","port":8883,
      "username":"gw-0001","password_file":")" + dir.File("pw") + R"("}]}})",
                          &c, &errors))
      << (errors.empty() ? "" : errors.front());
  EXPECT_EQ(c.backbone.endpoints[0].username, "gw-0001");
  EXPECT_EQ(c.backbone.endpoints[0].password_file, dir.File("pw"));

  Config d;
  errors.clear();
  EXPECT_FALSE(ParseConfig(R"({"backbone":{"endpoints":[
      {"name":"a","host":"127.0.0.1","port":1883,"password_file":")" + dir.File("pw") + R"("},
      {"name":"b","host":"127.0.0.1","port":1883,"username":"u","password_file":")" + dir.File("none") + R"("},
      {"name":"c","host":"127.0.0.1","port":1883,"username":")" + std::string(65536, 'u') + R"("},
      {"name":"d","host":"127.0.0.1","port":1883,"username":"u","password_file":"/dev/null"}]}})",
                           &d, &errors));
  for (const char* want : {"backbone.endpoints[0].password_file: needs username",
                           "backbone.endpoints[1].password_file: cannot read",
                           "backbone.endpoints[2].username: must be at most 65535 bytes",
                           "backbone.endpoints[3].password_file: \"/dev/null\" is not a regular file"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
  for (const std::string& e : errors) EXPECT_EQ(e.find("hunter2"), std::string::npos) << e;
}

TEST(ConfigParser, BackboneTlsAndTimingErrorsNameTheKeyAndNeverTheFileContents) {
  testing::TempDir dir;
  std::ofstream(dir.File("secret.key")) << "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n";
  Config c;
  std::vector<std::string> errors;
  const std::string json = R"({"backbone":{"endpoints":[
      {"name":"a","host":"127.0.0.1","port":8883,
       "tls":{"ca_file":")" + dir.File("missing-ca.pem") + R"(","key_file":")" + dir.File("secret.key") +
                           R"(","alpn":"mqtt,x-amzn-mqtt-ca","server_name":"broker.example","sni":"x"}},
      {"name":"b","host":"127.0.0.1","port":8883,"tls":{"ca_file":"/dev/null","verify_hostname":"no"}}],
    "reconnect_min_ms":0,"reconnect_max_ms":-1,"return_to_primary_s":100000,"ack_timeout_s":-1,
    "max_bytes_per_s":-5}})";
  EXPECT_FALSE(ParseConfig(json, &c, &errors));
  for (const char* want : {"backbone.endpoints[0].tls.ca_file: cannot read",
                           "backbone.endpoints[0].tls: cert_file and key_file go together",
                           "backbone.endpoints[0].tls.alpn: must be one protocol name",
                           "backbone.endpoints[0].tls.server_name: must be empty or equal to host",
                           "backbone.endpoints[0].tls.sni: unknown key",
                           "backbone.endpoints[1].tls.ca_file: \"/dev/null\" is not a regular file",
                           "backbone.endpoints[1].tls.verify_hostname: expected true or false",
                           "backbone.reconnect_min_ms: must be between", "backbone.reconnect_max_ms: must be between",
                           "backbone.return_to_primary_s: must be between",
                           "backbone.ack_timeout_s: must be between", "backbone.max_bytes_per_s: must be between"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
  EXPECT_TRUE(Contains(errors, "missing-ca.pem")) << "the error names the file";
  for (const std::string& e : errors) {
    EXPECT_EQ(e.find("c2VjcmV0"), std::string::npos) << e;
    EXPECT_EQ(e.find("PRIVATE KEY"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace ws
