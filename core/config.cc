#include "core/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <string_view>

#include "core/routing.h"

namespace ws {
namespace {

constexpr size_t kMaxMqttStringBytes = 65535;  // an MQTT UTF-8 string's length field

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

uint64_t WalCheckpointBytes(const StorageConfig& storage) {
  if (storage.wal_checkpoint_bytes != 0) return storage.wal_checkpoint_bytes;
  constexpr uint64_t kSmallest = uint64_t{4} << 20;  // the size before 16 MiB became the default
  return std::clamp(storage.max_bytes / 16, kSmallest, static_cast<uint64_t>(kDefaultWalCheckpointBytes));
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
  // Half at most: a reserve that large already leaves the other classes
  // little, and more is most likely a unit mistake.
  // (Only judged against a valid max_bytes: one root cause, one error.)
  if (c.storage.max_bytes >= 1024 * 1024 && c.storage.control_reserve_bytes > c.storage.max_bytes / 2) {
    err("storage.control_reserve_bytes", "must be at most half of storage.max_bytes (" +
                                             std::to_string(c.storage.max_bytes / 2) + "); the default is 1048576");
  }
  if (const uint64_t w = c.storage.wal_checkpoint_bytes;
      w != 0 && (w < static_cast<uint64_t>(kMinWalCheckpointBytes) || w > static_cast<uint64_t>(kMaxWalCheckpointBytes))) {
    err("storage.wal_checkpoint_bytes", "must be 0 (from storage.max_bytes) or between " +
                                            std::to_string(kMinWalCheckpointBytes) + " and " +
                                            std::to_string(kMaxWalCheckpointBytes));
  }
  for (Priority p : kAllPriorities) {
    const ClassLimits& cl = c.storage.classes[static_cast<size_t>(p)];
    const std::string key = "storage.classes." + std::string(PriorityName(p));
    if (cl.max_bytes > c.storage.max_bytes) err(key + ".max_bytes", "must not exceed storage.max_bytes");
    // Ten years: beyond that the limit means nothing, and seconds times a
    // million must stay far from overflowing.
    if (cl.max_age_s < 0 || cl.max_age_s > 315'360'000) err(key + ".max_age_s", "must be between 0 and 315360000");
    if (cl.overflow != OverflowPolicy::kRejectNew && cl.overflow != OverflowPolicy::kDropOldest) {
      err(key + ".overflow", "must be \"reject_new\" or \"drop_oldest\"");
    }
  }

  if (c.api.listen.empty()) err("api.listen", "needs at least one address");
  for (size_t i = 0; i < c.api.listen.size(); ++i) {
    if (!ValidListen(c.api.listen[i])) {
      err("api.listen[" + std::to_string(i) + "]", "expected \"HOST:PORT\", \"[IPV6]:PORT\" or \"unix:PATH\"");
    }
  }
  if (c.api.listen_tls.size() > c.api.listen.size()) err("api.listen", "more TLS settings than listen addresses");
  for (size_t i = 0; i < c.api.listen.size(); ++i) {
    const ListenTlsConfig* tls = ListenTls(c.api, i);
    if (tls == nullptr) continue;
    // The files themselves are checked by the TLS adapter (check-config, start
    // and SIGHUP): parsing them takes the TLS library, which core/ does not see.
    std::string key = "api.listen[" + std::to_string(i) + "].tls";
    if (c.api.listen[i].rfind("unix:", 0) == 0) {
      err(key, "Unix-socket listeners are plain; TLS needs a TCP address (\"HOST:PORT\" or \"[IPV6]:PORT\")");
    }
    if (tls->cert_file.empty()) err(key + ".cert_file", "required: the server's certificate (PEM)");
    if (tls->key_file.empty()) err(key + ".key_file", "required: the certificate's private key (PEM)");
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
    // A bucket smaller than one token would refuse every request.
    if (t.burst < 0 || (t.burst > 0 && t.burst < 1)) err(key + ".burst", "must be 0 (one second's worth) or >= 1");
    // Rate buckets and Idempotency-Key scopes are per token name.
    for (size_t j = 0; j < i; ++j) {
      if (!t.name.empty() && c.api.tokens[j].name == t.name) err(key + ".name", "\"" + t.name + "\" is used twice");
    }
  }
  if (c.api.max_event_bytes < 1024 || c.api.max_event_bytes > 16 * 1024 * 1024) {
    err("api.max_event_bytes", "must be between 1024 and 16777216");
  }
  if (c.api.max_connections == 0) err("api.max_connections", "must be > 0");
  if (c.api.anonymous_rate_per_s < 0) err("api.anonymous_rate_per_s", "must be >= 0");
  if (c.api.anonymous_burst < 0 || (c.api.anonymous_burst > 0 && c.api.anonymous_burst < 1)) {
    err("api.anonymous_burst", "must be 0 (one second's worth) or >= 1");
  }
  if (c.api.idempotency_ttl_s < 1 || c.api.idempotency_ttl_s > 30 * 86400) {
    err("api.idempotency_ttl_s", "must be between 1 and 2592000 (30 days)");
  }
  if (c.api.idempotency_max_keys == 0 || c.api.idempotency_max_keys > 10'000'000) {
    err("api.idempotency_max_keys", "must be between 1 and 10000000");
  }

  if (c.backbone.endpoints.empty()) err("backbone.endpoints", "needs at least one endpoint");
  for (size_t i = 0; i < c.backbone.endpoints.size(); ++i) {
    const EndpointConfig& e = c.backbone.endpoints[i];
    std::string key = "backbone.endpoints[" + std::to_string(i) + "]";
    if (e.name.empty()) err(key + ".name", "must not be empty");
    for (size_t j = 0; j < i; ++j) {
      if (!e.name.empty() && c.backbone.endpoints[j].name == e.name) {
        err(key + ".name", "\"" + e.name + "\" is already the name of endpoint " + std::to_string(j) +
                               " (logs, status and metrics tell endpoints apart by name)");
        break;
      }
    }
    if (e.host.empty()) err(key + ".host", "must not be empty");
    if (e.port == 0) err(key + ".port", "must be 1-65535");
    // A missing or unreadable TLS or password file fails check-config here
    // rather than every connect later. Only open(2) is tried: the contents
    // are read at connect time and appear in no message. O_NONBLOCK keeps a
    // FIFO at that path from hanging the check.
    auto check_file = [&](const std::string& file_key, const std::string& path) {
      if (path.empty()) return;
      int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
      if (fd < 0) {
        err(file_key, ErrnoStatus(errno, "cannot read \"" + path + "\"").message());
        return;
      }
      struct stat st {};
      bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
      close(fd);
      if (!regular) err(file_key, "\"" + path + "\" is not a regular file");
    };
    if (e.username.size() > kMaxMqttStringBytes) err(key + ".username", "must be at most 65535 bytes");
    if (!e.password_file.empty() && e.username.empty()) {
      err(key + ".password_file", "needs username (MQTT sends a password only with a user name)");
    }
    check_file(key + ".password_file", e.password_file);
    if (!e.tls.enabled) continue;
    check_file(key + ".tls.ca_file", e.tls.ca_file);
    check_file(key + ".tls.cert_file", e.tls.cert_file);
    check_file(key + ".tls.key_file", e.tls.key_file);
    if (e.tls.cert_file.empty() != e.tls.key_file.empty()) {
      err(key + ".tls", "cert_file and key_file go together (both for mTLS, or neither)");
    }
    if (e.tls.alpn.size() > 254 || (e.tls.alpn.find_first_of(std::string_view(",\0", 2)) != std::string::npos)) {
      err(key + ".tls.alpn", "must be one protocol name of at most 254 characters");
    }
    // libmosquitto 2.0 sends `host` as the TLS server name and checks the
    // certificate against it; an override could not be honoured.
    if (!e.tls.server_name.empty() && e.tls.server_name != e.host) {
      err(key + ".tls.server_name",
          "must be empty or equal to host: the broker client sends host as the TLS server name (SNI) and checks "
          "the certificate against it; set host to the name in the broker's certificate");
    }
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
  if (c.backbone.reconnect_min_ms < 1 || c.backbone.reconnect_min_ms > 3'600'000) {
    err("backbone.reconnect_min_ms", "must be between 1 and 3600000");
  }
  if (c.backbone.reconnect_max_ms < c.backbone.reconnect_min_ms || c.backbone.reconnect_max_ms > 3'600'000) {
    err("backbone.reconnect_max_ms", "must be between reconnect_min_ms and 3600000");
  }
  if (c.backbone.return_to_primary_s < 0 || c.backbone.return_to_primary_s > 86400) {
    err("backbone.return_to_primary_s", "must be between 0 (never) and 86400");
  }
  if (c.backbone.ack_timeout_s < 0 || c.backbone.ack_timeout_s > 86400) {
    err("backbone.ack_timeout_s", "must be between 0 (never) and 86400");
  }
  if (c.backbone.max_bytes_per_s < 0 || c.backbone.max_bytes_per_s > 1'000'000'000) {
    err("backbone.max_bytes_per_s", "must be between 0 (no cap) and 1000000000");
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
