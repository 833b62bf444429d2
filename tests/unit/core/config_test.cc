#include "core/config.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace ws {
namespace {

Config ValidConfig() {
  Config c;
  EndpointConfig e;
  e.name = "primary";
  e.host = "broker.example.net";
  e.port = 8883;
  c.backbone.endpoints.push_back(e);
  return c;
}

TokenConfig GoodToken() {
  TokenConfig t;
  t.name = "line-2";
  t.sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  return t;
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += "\n  " + s;
  return out;
}

bool HasErrorFor(const std::vector<std::string>& errors, const std::string& key) {
  for (const std::string& e : errors) {
    if (e.rfind(key + ": ", 0) == 0) return true;
  }
  return false;
}

TEST(ConfigTest, DefaultWithOneEndpointIsValid) {
  std::vector<std::string> errors;
  EXPECT_TRUE(ValidateConfig(ValidConfig(), &errors)) << Join(errors);
  EXPECT_TRUE(errors.empty()) << Join(errors);
}

TEST(ConfigTest, DefaultWithoutEndpointIsInvalid) {
  std::vector<std::string> errors;
  EXPECT_FALSE(ValidateConfig(Config{}, &errors));
  EXPECT_TRUE(HasErrorFor(errors, "backbone.endpoints")) << Join(errors);
}

struct BadValue {
  const char* what;
  std::function<void(Config*)> mutate;
  std::string key;                // the key the error must name
  std::vector<std::string> also = {};  // keys of knock-on errors, if any
};

// 0 takes a sixteenth of the store's size, from 4 MiB to 16 MiB; any other
// value is used as given (ValidateConfig keeps it in range).
TEST(ConfigTest, TheCheckpointSizeFollowsTheStoreSizeUnlessSet) {
  StorageConfig s;
  EXPECT_EQ(WalCheckpointBytes(s), uint64_t{16} << 20);  // the default store, 256 MiB
  s.max_bytes = uint64_t{128} << 20;
  EXPECT_EQ(WalCheckpointBytes(s), uint64_t{8} << 20);
  s.max_bytes = uint64_t{1} << 20;
  EXPECT_EQ(WalCheckpointBytes(s), uint64_t{4} << 20);
  s.max_bytes = uint64_t{8} << 30;
  EXPECT_EQ(WalCheckpointBytes(s), uint64_t{16} << 20);
  s.wal_checkpoint_bytes = 65536;
  EXPECT_EQ(WalCheckpointBytes(s), 65536u);
  Config c = ValidConfig();
  c.storage.wal_checkpoint_bytes = uint64_t{256} << 20;
  std::vector<std::string> errors;
  EXPECT_TRUE(ValidateConfig(c, &errors)) << (errors.empty() ? "" : errors.front());
  c.storage.wal_checkpoint_bytes = 65536;
  EXPECT_TRUE(ValidateConfig(c, &errors)) << (errors.empty() ? "" : errors.front());
}

TEST(ConfigTest, EachBadValueNamesItsKey) {
  TokenConfig good_token;
  good_token.name = "line-2";
  good_token.sha256 = std::string(64, 'a');
  const BadValue cases[] = {
      {"node.id with '/'", [](Config* c) { c->node.id = "gw/1"; }, "node.id"},
      {"node.id with '+'", [](Config* c) { c->node.id = "gw+1"; }, "node.id", {"backbone.topic_prefix"}},
      {"node.id empty", [](Config* c) { c->node.id = ""; }, "node.id", {"backbone.topic_prefix"}},
      {"node.id too long", [](Config* c) { c->node.id = std::string(65, 'g'); }, "node.id"},
      {"node.site with '#'", [](Config* c) { c->node.site = "plant#7"; }, "node.site", {"backbone.topic_prefix"}},
      {"node.site with newline", [](Config* c) { c->node.site = "plant\n7"; }, "node.site"},
      {"storage.path empty", [](Config* c) { c->storage.path = ""; }, "storage.path"},
      {"storage.max_bytes too small", [](Config* c) { c->storage.max_bytes = 1024 * 1024 - 1; }, "storage.max_bytes"},
      {"storage.retain_delivered_s negative", [](Config* c) { c->storage.retain_delivered_s = -1; },
       "storage.retain_delivered_s"},
      {"storage.commit_window_us too big", [](Config* c) { c->storage.commit_window_us = 1'000'001; },
       "storage.commit_window_us"},
      {"storage.wal_checkpoint_bytes too small", [](Config* c) { c->storage.wal_checkpoint_bytes = 65535; },
       "storage.wal_checkpoint_bytes"},
      {"storage.wal_checkpoint_bytes too big",
       [](Config* c) { c->storage.wal_checkpoint_bytes = (uint64_t{256} << 20) + 1; }, "storage.wal_checkpoint_bytes"},
      {"api.listen empty", [](Config* c) { c->api.listen.clear(); }, "api.listen"},
      {"api.listen no port", [](Config* c) { c->api.listen = {"1.2.3.4"}; }, "api.listen[0]"},
      {"api.listen v6 without colon", [](Config* c) { c->api.listen = {"[::1]8080"}; }, "api.listen[0]"},
      {"api.listen second entry", [](Config* c) { c->api.listen = {"127.0.0.1:8080", "::1:8080"}; },
       "api.listen[1]"},
      {"token sha256 short", [&](Config* c) {
         c->api.tokens = {good_token};
         c->api.tokens[0].sha256 = std::string(63, 'a');
       }, "api.tokens[0].sha256"},
      {"token sha256 not hex", [&](Config* c) {
         c->api.tokens = {good_token};
         c->api.tokens[0].sha256 = std::string(63, 'a') + "g";
       }, "api.tokens[0].sha256"},
      {"token sha256 uppercase", [&](Config* c) {
         c->api.tokens = {good_token};
         c->api.tokens[0].sha256 = std::string(64, 'A');
       }, "api.tokens[0].sha256"},
      {"token without name", [&](Config* c) {
         c->api.tokens = {good_token, good_token};
         c->api.tokens[1].name = "";
       }, "api.tokens[1].name"},
      {"token negative rate", [&](Config* c) {
         c->api.tokens = {good_token};
         c->api.tokens[0].rate_per_s = -1;
       }, "api.tokens[0].rate_per_s"},
      {"api.max_event_bytes too small", [](Config* c) { c->api.max_event_bytes = 1023; }, "api.max_event_bytes"},
      {"api.max_connections zero", [](Config* c) { c->api.max_connections = 0; }, "api.max_connections"},
      {"endpoint port 0", [](Config* c) { c->backbone.endpoints[0].port = 0; }, "backbone.endpoints[0].port"},
      {"second endpoint without host", [](Config* c) {
         c->backbone.endpoints.push_back(c->backbone.endpoints[0]);
         c->backbone.endpoints[1].name = "secondary";
         c->backbone.endpoints[1].host = "";
       }, "backbone.endpoints[1].host"},
      {"two endpoints of one name", [](Config* c) {
         c->backbone.endpoints.push_back(c->backbone.endpoints[0]);
         c->backbone.endpoints[1].port = 8884;
       }, "backbone.endpoints[1].name"},
      {"endpoint without name", [](Config* c) { c->backbone.endpoints[0].name = ""; }, "backbone.endpoints[0].name"},
      {"inflight_window 0", [](Config* c) { c->backbone.inflight_window = 0; }, "backbone.inflight_window"},
      {"inflight_window too big", [](Config* c) { c->backbone.inflight_window = 65536; }, "backbone.inflight_window"},
      {"keepalive too short", [](Config* c) { c->backbone.keepalive_s = 4; }, "backbone.keepalive_s"},
      {"topic_prefix empty level", [](Config* c) { c->backbone.topic_prefix = "ws//{node}"; }, "backbone.topic_prefix"},
      {"topic_prefix wildcard", [](Config* c) { c->backbone.topic_prefix = "ws/+/{node}"; }, "backbone.topic_prefix"},
      {"route topic with '#'", [](Config* c) {
         c->routes.push_back(RouteConfig{"alarm.*", "{prefix}/alarms/#", Priority::kHigh, 0});
       }, "routes[0].topic"},
      {"route topic with '+'", [](Config* c) {
         c->routes.push_back(RouteConfig{"*", "{prefix}/events/{type}", Priority::kNormal, 0});
         c->routes.push_back(RouteConfig{"alarm.*", "{prefix}/+/x", Priority::kHigh, 0});
       }, "routes[1].topic"},
      {"route without match", [](Config* c) {
         c->routes.push_back(RouteConfig{"", "{prefix}/x", Priority::kHigh, 0});
       }, "routes[0].match_type"},
      {"route negative ttl", [](Config* c) {
         c->routes.push_back(RouteConfig{"*", "{prefix}/x", Priority::kHigh, -1});
       }, "routes[0].ttl_s"},
      {"log.level loud", [](Config* c) { c->log.level = "loud"; }, "log.level"},
      {"log.level uppercase", [](Config* c) { c->log.level = "INFO"; }, "log.level"},
      {"log.format xml", [](Config* c) { c->log.format = "xml"; }, "log.format"},
  };
  for (const BadValue& bad : cases) {
    Config c = ValidConfig();
    bad.mutate(&c);
    std::vector<std::string> errors;
    EXPECT_FALSE(ValidateConfig(c, &errors)) << bad.what;
    EXPECT_EQ(errors.size(), 1 + bad.also.size()) << bad.what << Join(errors);
    EXPECT_TRUE(HasErrorFor(errors, bad.key)) << bad.what << ": expected an error for " << bad.key << Join(errors);
    for (const std::string& key : bad.also) EXPECT_TRUE(HasErrorFor(errors, key)) << bad.what << ": " << key;
  }
}

TEST(ConfigTest, TlsListenersNeedTcpAndBothFilesAndStillFollowDefaultDeny) {
  ListenTlsConfig tls;
  tls.enabled = true;
  tls.cert_file = "/etc/waystation/api.crt";
  tls.key_file = "/etc/waystation/api.key";

  Config c = ValidConfig();
  c.api.listen = {"unix:var/api.sock", "127.0.0.1:8443"};
  c.api.listen_tls = {ListenTlsConfig{}, tls};
  std::vector<std::string> errors;
  EXPECT_TRUE(ValidateConfig(c, &errors)) << Join(errors);
  EXPECT_EQ(ListenTls(c.api, 0), nullptr);
  ASSERT_NE(ListenTls(c.api, 1), nullptr);
  EXPECT_EQ(ListenTls(c.api, 1)->key_file, "/etc/waystation/api.key");
  EXPECT_EQ(ListenTls(c.api, 2), nullptr);

  c.api.listen_tls = {tls, ListenTlsConfig{}};  // TLS on the Unix socket
  errors.clear();
  EXPECT_FALSE(ValidateConfig(c, &errors));
  EXPECT_TRUE(HasErrorFor(errors, "api.listen[0].tls")) << Join(errors);

  ListenTlsConfig no_files;
  no_files.enabled = true;
  c.api.listen_tls = {ListenTlsConfig{}, no_files};
  errors.clear();
  EXPECT_FALSE(ValidateConfig(c, &errors));
  EXPECT_TRUE(HasErrorFor(errors, "api.listen[1].tls.cert_file")) << Join(errors);
  EXPECT_TRUE(HasErrorFor(errors, "api.listen[1].tls.key_file")) << Join(errors);
  EXPECT_EQ(errors.size(), 2u) << Join(errors);

  // TLS is no substitute for tokens off loopback.
  c.api.listen = {"0.0.0.0:8443"};
  c.api.listen_tls = {tls};
  errors.clear();
  EXPECT_FALSE(ValidateConfig(c, &errors));
  EXPECT_TRUE(HasErrorFor(errors, "api.listen[0]")) << Join(errors);
  c.api.tokens = {GoodToken()};
  errors.clear();
  EXPECT_TRUE(ValidateConfig(c, &errors)) << Join(errors);
}

TEST(ConfigTest, ListenForms) {
  struct Case {
    const char* listen;
    bool valid;
  };
  const Case cases[] = {
      {"127.0.0.1:8080", true},
      {"0.0.0.0:1", true},
      {"localhost:65535", true},
      {"[::1]:8080", true},
      {"[::]:80", true},
      {"unix:/run/waystation/api.sock", true},
      {"1.2.3.4", false},
      {"[::1]8080", false},
      {"::1:8080", false},
      {"[::1:8080", false},
      {"[]:8080", false},
      {":8080", false},
      {"127.0.0.1:", false},
      {"127.0.0.1:65536", false},
      {"127.0.0.1:123456", false},
      {"127.0.0.1:80a", false},
      {"127.0.0.1:-1", false},
      {"unix:", false},
      {"", false},
  };
  for (const Case& lc : cases) {
    Config c = ValidConfig();
    c.api.tokens.push_back(GoodToken());  // so non-loopback addresses are judged on form alone
    c.api.listen = {lc.listen};
    std::vector<std::string> errors;
    EXPECT_EQ(ValidateConfig(c, &errors), lc.valid) << '"' << lc.listen << '"' << Join(errors);
    if (!lc.valid) {
      EXPECT_TRUE(HasErrorFor(errors, "api.listen[0]")) << lc.listen << Join(errors);
    }
  }
}

TEST(ConfigTest, NonLocalListenWithoutTokensIsRefused) {
  // Default-deny: without tokens the API may only listen where only this
  // machine can reach it.
  for (const char* listen : {"0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080", "gw.example:8080",
                             "127.gw.example:8080"}) {
    Config c = ValidConfig();
    c.api.listen = {"127.0.0.1:8080", listen};
    std::vector<std::string> errors;
    EXPECT_FALSE(ValidateConfig(c, &errors)) << listen;
    EXPECT_EQ(errors.size(), 1u) << listen << Join(errors);
    EXPECT_TRUE(HasErrorFor(errors, "api.listen[1]")) << listen << Join(errors);

    c.api.tokens.push_back(GoodToken());
    errors.clear();
    EXPECT_TRUE(ValidateConfig(c, &errors)) << listen << Join(errors);
  }
  for (const char* listen : {"127.0.0.1:8080", "127.1.2.3:1", "localhost:8080", "[::1]:8080", "unix:var/api.sock"}) {
    Config c = ValidConfig();
    c.api.listen = {listen};
    std::vector<std::string> errors;
    EXPECT_TRUE(ValidateConfig(c, &errors)) << listen << Join(errors);
  }
}

TEST(ConfigTest, IsLocalListenAddress) {
  EXPECT_TRUE(IsLocalListenAddress("127.0.0.1:8080"));
  EXPECT_TRUE(IsLocalListenAddress("127.10.0.3:0"));
  EXPECT_TRUE(IsLocalListenAddress("localhost:8080"));
  EXPECT_TRUE(IsLocalListenAddress("[::1]:80"));
  EXPECT_TRUE(IsLocalListenAddress("[::ffff:127.0.0.1]:80"));
  EXPECT_TRUE(IsLocalListenAddress("LocalHost:8080"));
  EXPECT_TRUE(IsLocalListenAddress("unix:/run/waystation/api.sock"));
  EXPECT_FALSE(IsLocalListenAddress("[2001:db8::1]:80"));
  EXPECT_FALSE(IsLocalListenAddress("[::ffff:192.0.2.1]:80"));
  EXPECT_FALSE(IsLocalListenAddress("0.0.0.0:80"));
  EXPECT_FALSE(IsLocalListenAddress("128.0.0.1:80"));
  EXPECT_FALSE(IsLocalListenAddress("[::]:80"));
  EXPECT_FALSE(IsLocalListenAddress("gw.example:80"));
  EXPECT_FALSE(IsLocalListenAddress("127.gw.example:80"));  // a name, resolved by the listener
  EXPECT_FALSE(IsLocalListenAddress("127.0.0.1"));
  EXPECT_FALSE(IsLocalListenAddress(""));
}

TEST(ConfigTest, GoodTokenIsAccepted) {
  Config c = ValidConfig();
  TokenConfig t;
  t.name = "line-2";
  t.sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  t.allow_types = {"com.example.*"};
  t.rate_per_s = 100;
  t.burst = 200;
  c.api.tokens.push_back(t);
  std::vector<std::string> errors;
  EXPECT_TRUE(ValidateConfig(c, &errors)) << Join(errors);
}

TEST(ConfigTest, GoodRoutesAreAccepted) {
  Config c = ValidConfig();
  c.routes.push_back(RouteConfig{"alarm.*", "{prefix}/alarms/{type}", Priority::kHigh, 3600});
  c.routes.push_back(RouteConfig{"*", "{site}/{node}/{source}", Priority::kBulk, 0});
  std::vector<std::string> errors;
  EXPECT_TRUE(ValidateConfig(c, &errors)) << Join(errors);
}

TEST(ConfigTest, AllErrorsAreReportedAtOnce) {
  Config c = ValidConfig();
  c.node.id = "gw/1";
  c.storage.max_bytes = 10;
  c.api.listen = {"1.2.3.4"};
  c.backbone.endpoints[0].port = 0;
  c.log.level = "loud";
  std::vector<std::string> errors;
  EXPECT_FALSE(ValidateConfig(c, &errors));
  for (const char* key : {"node.id", "storage.max_bytes", "api.listen[0]", "backbone.endpoints[0].port", "log.level"}) {
    EXPECT_TRUE(HasErrorFor(errors, key)) << key << Join(errors);
  }
  EXPECT_EQ(errors.size(), 5u) << Join(errors);
}

TEST(ConfigTest, ErrorsAreAppendedNotReplaced) {
  std::vector<std::string> errors = {"earlier: problem"};
  EXPECT_TRUE(ValidateConfig(ValidConfig(), &errors));  // only new problems count
  EXPECT_EQ(errors.size(), 1u);
  Config bad = ValidConfig();
  bad.log.level = "loud";
  EXPECT_FALSE(ValidateConfig(bad, &errors));
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], "earlier: problem");
}

TEST(ConfigTest, ExpandTopicPrefix) {
  Config c;
  EXPECT_EQ(ExpandTopicPrefix(c), "waystation/default/gw-0001");
  c.node.site = "plant-7";
  c.node.id = "gw-0042";
  EXPECT_EQ(ExpandTopicPrefix(c), "waystation/plant-7/gw-0042");
  c.backbone.topic_prefix = "{node}/{site}/{node}";
  EXPECT_EQ(ExpandTopicPrefix(c), "gw-0042/plant-7/gw-0042");
  c.backbone.topic_prefix = "fixed/{other}/{site";
  EXPECT_EQ(ExpandTopicPrefix(c), "fixed/{other}/{site");
  c.backbone.topic_prefix = "";
  EXPECT_EQ(ExpandTopicPrefix(c), "");
}

}  // namespace
}  // namespace ws
