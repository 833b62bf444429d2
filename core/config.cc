#include "core/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <strings.h>

#include <string_view>

#include "core/routing.h"

namespace ws {
namespace {

bool IsHexLower(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsTopicSafe(std::string_view s) {
  for (char c : s) {
    if (c == '/' || c == '+' || c == '#' || c == '\0' || static_cast<unsigned char>(c) < 0x20) return false;
  }
  return !s.empty();
}

bool ValidListen(std::string_view l) {
  if (l.rfind("unix:", 0) == 0) return l.size() > 5;
  size_t colon = l.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 >= l.size()) return false;
  std::string_view port = l.substr(colon + 1);
  if (port.size() > 5) return false;
  unsigned v = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  std::string_view host = l.substr(0, colon);
  if (host.front() == '[') return host.back() == ']' && host.size() > 2;
  return host.find(':') == std::string_view::npos;
}

}  // namespace

bool IsLocalListenAddress(std::string_view l) {
  if (l.rfind("unix:", 0) == 0) return l.size() > 5;
  if (!ValidListen(l)) return false;
  std::string host(l.substr(0, l.rfind(':')));
  if (host.size() == 9 && strncasecmp(host.c_str(), "localhost", 9) == 0) return true;
  // Numeric addresses only: a name is resolved by the listener and may point
  // anywhere, so "127.gw.example" is not local.
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  if (host.size() > 2 && host.front() == '[') {
    std::string inner = host.substr(1, host.size() - 2);
    in6_addr v6{};
    if (inet_pton(AF_INET6, inner.c_str(), &v6) != 1) return false;
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

std::string ExpandTopicPrefix(const Config& config) {
  std::string out;
  const std::string& t = config.backbone.topic_prefix;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, 6, "{site}") == 0) {
      out += config.node.site;
      i += 6;
    } else if (t.compare(i, 6, "{node}") == 0) {
      out += config.node.id;
      i += 6;
    } else {
      out += t[i++];
    }
  }
  return out;
}

bool ValidateConfig(const Config& c, std::vector<std::string>* errors) {
  size_t before = errors->size();
  auto err = [errors](std::string key, std::string_view why) {
    key += ": ";
    key += why;
    errors->push_back(std::move(key));
  };

  if (!IsTopicSafe(c.node.id) || c.node.id.size() > 64) {
    err("node.id", "must be 1-64 characters without '/', '+', '#' or control characters");
  }
  if (!IsTopicSafe(c.node.site) || c.node.site.size() > 64) {
    err("node.site", "must be 1-64 characters without '/', '+', '#' or control characters");
  }

  if (c.storage.path.empty()) err("storage.path", "must not be empty");
  if (c.storage.max_bytes < 1024 * 1024) err("storage.max_bytes", "must be at least 1048576 (1 MiB)");
  if (c.storage.retain_delivered_s < 0) err("storage.retain_delivered_s", "must be >= 0");
  if (c.storage.commit_window_us < 0 || c.storage.commit_window_us > 1'000'000) {
    err("storage.commit_window_us", "must be between 0 and 1000000");
  }

  if (c.api.listen.empty()) err("api.listen", "needs at least one address");
  for (size_t i = 0; i < c.api.listen.size(); ++i) {
    if (!ValidListen(c.api.listen[i])) {
      err("api.listen[" + std::to_string(i) + "]", "expected \"HOST:PORT\", \"[IPV6]:PORT\" or \"unix:PATH\"");
    }
  }
  if (c.api.tokens.empty()) {
    for (size_t i = 0; i < c.api.listen.size(); ++i) {
      if (ValidListen(c.api.listen[i]) && !IsLocalListenAddress(c.api.listen[i])) {
        err("api.listen[" + std::to_string(i) + "]",
            "\"" + c.api.listen[i] + "\" is not a loopback or Unix address; configure api.tokens before listening there");
      }
    }
  }
  for (size_t i = 0; i < c.api.tokens.size(); ++i) {
    const TokenConfig& t = c.api.tokens[i];
    std::string key = "api.tokens[" + std::to_string(i) + "]";
    if (t.name.empty()) err(key + ".name", "must not be empty");
    if (t.sha256.size() != 64 || !IsHexLower(t.sha256)) err(key + ".sha256", "must be 64 lowercase hex digits");
    if (t.rate_per_s < 0) err(key + ".rate_per_s", "must be >= 0");
    if (t.burst < 0) err(key + ".burst", "must be >= 0");
  }
  if (c.api.max_event_bytes < 1024 || c.api.max_event_bytes > 16 * 1024 * 1024) {
    err("api.max_event_bytes", "must be between 1024 and 16777216");
  }
  if (c.api.max_connections == 0) err("api.max_connections", "must be > 0");

  if (c.backbone.endpoints.empty()) err("backbone.endpoints", "needs at least one endpoint");
  for (size_t i = 0; i < c.backbone.endpoints.size(); ++i) {
    const EndpointConfig& e = c.backbone.endpoints[i];
    std::string key = "backbone.endpoints[" + std::to_string(i) + "]";
    if (e.name.empty()) err(key + ".name", "must not be empty");
    if (e.host.empty()) err(key + ".host", "must not be empty");
    if (e.port == 0) err(key + ".port", "must be 1-65535");
  }
  std::string prefix = ExpandTopicPrefix(c);
  if (!IsValidPublishTopic(prefix)) {
    err("backbone.topic_prefix", "must expand to a topic without wildcards or empty levels");
  }
  if (c.backbone.keepalive_s < 5 || c.backbone.keepalive_s > 65535) {
    err("backbone.keepalive_s", "must be between 5 and 65535");
  }
  if (c.backbone.inflight_window == 0 || c.backbone.inflight_window > 65535) {
    err("backbone.inflight_window", "must be between 1 and 65535");
  }

  for (size_t i = 0; i < c.routes.size(); ++i) {
    const RouteConfig& r = c.routes[i];
    std::string key = "routes[" + std::to_string(i) + "]";
    if (r.match_type.empty()) err(key + ".match_type", "must not be empty");
    if (r.topic.empty()) err(key + ".topic", "must not be empty");
    if (r.ttl_s < 0) err(key + ".ttl_s", "must be >= 0");
    if (r.topic.find('+') != std::string::npos || r.topic.find('#') != std::string::npos) {
      err(key + ".topic", "must not contain MQTT wildcards");
    }
  }

  if (c.log.level != "debug" && c.log.level != "info" && c.log.level != "warn" && c.log.level != "error") {
    err("log.level", "must be one of debug, info, warn, error");
  }
  if (c.log.format != "json" && c.log.format != "text") err("log.format", "must be \"json\" or \"text\"");
  return errors->size() == before;
}

}  // namespace ws
