#include <gtest/gtest.h>

#include "adapters/json/json_codec.h"

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
  EXPECT_EQ(c.api.tokens[0].allow_types[0], "com.acme.*");
  EXPECT_EQ(c.routes[0].priority, Priority::kHigh);
  EXPECT_EQ(c.routes[0].ttl_s, 604800);
  EXPECT_EQ(ExpandTopicPrefix(c), "waystation/plant-7/gw-0001");
}

TEST(ConfigParser, UnknownKeysAndWrongTypesAreAllReported) {
  Config c;
  std::vector<std::string> errors;
  EXPECT_FALSE(ParseConfig(R"({"node":{"id":5,"zone":"x"},"storage":{"max_bytes":-1},"extra":1,
      "backbone":{"endpoints":[{"name":"a","host":"h","port":70000}],"protocol":"mqtt4"},
      "routes":[{"match_type":"x","topic":"t","priority":"urgent"}],
      "management":{"enabled":"yes"}})",
                           &c, &errors));
  for (const char* want : {"node.id: expected a string", "node.zone: unknown key", "storage.max_bytes: out of range",
                           "extra: unknown key", "backbone.endpoints[0].port: out of range",
                           "backbone.protocol: must be", "routes[0].priority: must be one of",
                           "management.enabled: expected true or false"}) {
    EXPECT_TRUE(Contains(errors, want)) << want;
  }
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

}  // namespace
}  // namespace ws
