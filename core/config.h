// The node's configuration model (one JSON file; see docs/configuration.md).
// The JSON adapter fills it; ValidateConfig checks what the file format
// cannot. Plain values; no threads involved.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/outbox_policy.h"
#include "core/priority.h"
#include "platform/status.h"

namespace ws {

struct NodeConfig {
  std::string id = "gw-0001";
  std::string site = "default";

  bool operator==(const NodeConfig&) const = default;
};

struct StorageConfig {
  std::string path = "var/outbox.db";
  uint64_t max_bytes = 268435456;   // 256 MiB
  int64_t retain_delivered_s = 0;   // keep delivered events for replay; 0 = delete on ack
  int64_t commit_window_us = 8000;  // longest a group commit waits to gather more events
  uint64_t control_reserve_bytes = 1048576;  // top of max_bytes only control events may use
  // The WAL is copied into the database file once it holds this much; the
  // -wal file beside it is kept at up to twice that. 0 = from max_bytes
  // (WalCheckpointBytes below).
  uint64_t wal_checkpoint_bytes = 0;
  // New events are made durable in a small log beside the file and enter
  // the database only if the link has not delivered them within about a
  // second (adapters/sqlite/intake_log.h).
  bool intake_log = true;
  // Per priority class (indexed by Priority); see core/outbox_policy.h.
  ClassLimitsArray classes = DefaultClassLimitsArray();

  bool operator==(const StorageConfig&) const = default;
};

struct TokenConfig {
  std::string name;
  std::string sha256;  // lowercase hex of the token's SHA-256
  std::vector<std::string> allow_types;  // globs; empty = all
  double rate_per_s = 0;                 // events per second; 0 = unlimited
  double burst = 0;                      // bucket size; 0 = one second's worth
  bool admin = false;                    // may use the operator endpoints (/v1/dlq)

  bool operator==(const TokenConfig&) const = default;
};

// HTTPS on one TCP listener of the local API: the "tls" object of an
// api.listen entry written as {"address": ..., "tls": {...}}. Files are PEM,
// read at start and again on SIGHUP.
struct ListenTlsConfig {
  bool enabled = false;        // the entry has a "tls" object
  std::string cert_file;       // the server certificate, then any intermediate CAs
  std::string key_file;        // its private key (not passphrase-protected)
  std::string client_ca_file;  // mTLS: CAs that sign client certificates; empty = no client certificate asked for

  bool operator==(const ListenTlsConfig&) const = default;
};

struct ApiConfig {
  std::vector<std::string> listen = {"127.0.0.1:8080"};  // "HOST:PORT", "[V6]:PORT" or "unix:PATH"
  // Parallel to `listen`; empty when no listener has TLS, and entries past
  // its end are plain. See ListenTls().
  std::vector<ListenTlsConfig> listen_tls;
  std::vector<TokenConfig> tokens;
  uint64_t max_event_bytes = 262144;  // 256 KiB
  uint32_t max_connections = 256;
  double anonymous_rate_per_s = 0;     // one shared bucket for producers without a token; 0 = unlimited
  double anonymous_burst = 0;
  int64_t idempotency_ttl_s = 86400;   // how long an Idempotency-Key's first answer is remembered
  uint32_t idempotency_max_keys = 100000;

  bool operator==(const ApiConfig&) const = default;
};

// TLS to one broker endpoint (libmosquitto's OpenSSL). Files are PEM and
// read at every connect, so renewed certificates take effect on reconnect.
struct EndpointTlsConfig {
  bool enabled = false;       // the endpoint has a "tls" object
  std::string ca_file;        // CAs that may sign the broker's certificate; empty = the system's trusted CAs
  std::string cert_file;      // client certificate for mTLS; needs key_file
  std::string key_file;       // its private key (not passphrase-protected)
  std::string alpn;           // one ALPN protocol name, e.g. "mqtt"; empty = none
  bool verify_hostname = true;  // the certificate must name `host`
  std::string server_name;    // SNI; empty or equal to host (the client library sends host)

  bool operator==(const EndpointTlsConfig&) const = default;
};

struct EndpointConfig {
  std::string name;
  std::string host;
  uint16_t port = 1883;
  EndpointTlsConfig tls = {};  // enabled = false: plain TCP
  // false: the presence messages (birth, Will, offline) go without the
  // retain flag, for brokers that refuse retained messages. An MQTT 5 broker
  // that says so (CONNACK) is recognised without it.
  bool retain = true;
  // MQTT user name, and the file that holds the password (read at every
  // connect, so a rotated password applies at the next one; one trailing
  // newline is not part of it). Empty: none.
  std::string username = {};
  std::string password_file = {};

  bool operator==(const EndpointConfig&) const = default;
};

enum class MqttProtocol { kMqtt5, kMqtt311 };

struct BackboneConfig {
  std::vector<EndpointConfig> endpoints;
  MqttProtocol protocol = MqttProtocol::kMqtt5;
  std::string topic_prefix = "waystation/{site}/{node}";
  std::string client_id;  // default: "waystation-{node}"
  uint32_t keepalive_s = 30;
  uint32_t inflight_window = 512;
  int64_t reconnect_min_ms = 200;     // decorrelated jitter between reconnects: floor
  int64_t reconnect_max_ms = 30000;   // and cap
  int64_t return_to_primary_s = 300;  // primary reachable this long -> move back to it; 0 = stay
  int64_t ack_timeout_s = 60;         // no PUBACK this long while publishes wait -> reconnect; 0 = never
  int64_t max_bytes_per_s = 0;        // cap on the PUBLISH bytes sent per second (metered uplinks); 0 = none

  bool operator==(const BackboneConfig&) const = default;
};

struct RouteConfig {
  std::string match_type;  // glob on the event type: '*' matches any run of characters
  std::string topic;       // template: {prefix} {type} {source} {site} {node}
  Priority priority = Priority::kNormal;
  int64_t ttl_s = 0;       // 0 = no expiry

  bool operator==(const RouteConfig&) const = default;
};

struct ManagementConfig {
  bool enabled = true;
  bool require_signed_commands = false;

  bool operator==(const ManagementConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";
  std::string format = "json";  // "json" | "text"

  bool operator==(const LogConfig&) const = default;
};

struct Config {
  NodeConfig node;
  StorageConfig storage;
  ApiConfig api;
  BackboneConfig backbone;
  std::vector<RouteConfig> routes;
  ManagementConfig management;
  LogConfig log;

  bool operator==(const Config&) const = default;
};

// Checks the values (ranges, formats, cross-field rules) and appends one
// human-readable reason per problem to `errors`, each naming the key
// ("backbone.endpoints[1].port: ..."). True if there were none.
bool ValidateConfig(const Config& config, std::vector<std::string>* errors);

// The checkpoint size the store runs with: storage.wal_checkpoint_bytes, or
// when that is 0 a sixteenth of storage.max_bytes, from 4 MiB to 16 MiB, so
// that a store smaller than 256 MiB does not keep a WAL larger than the 16
// MiB one that 4 MiB checkpoints kept, nor checkpoint more often than that.
uint64_t WalCheckpointBytes(const StorageConfig& storage);

// The TLS settings of api.listen[i]; nullptr for a plain listener.
inline const ListenTlsConfig* ListenTls(const ApiConfig& api, size_t i) {
  return i < api.listen_tls.size() && api.listen_tls[i].enabled ? &api.listen_tls[i] : nullptr;
}

// True for a loopback TCP listen address (127.0.0.0/8, [::1], localhost) or
// a "unix:" path. Listeners elsewhere require tokens (default-deny).
bool IsLocalListenAddress(std::string_view listen);

// Replaces {site} and {node} in the topic prefix.
std::string ExpandTopicPrefix(const Config& config);

}  // namespace ws
