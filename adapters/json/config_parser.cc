// The configuration file: strict. An unknown key is an error, never ignored
// (a misspelt key silently falling back to a default is how fleets drift).
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "adapters/json/cjson_ptr.h"
#include "adapters/json/json_codec.h"

namespace ws {
namespace {

using json_internal::CjsonPtr;
using json_internal::ParseExact;

class ConfigReader {
 public:
  explicit ConfigReader(std::vector<std::string>* errors) : errors_(errors) {}

  void Error(const std::string& key, std::string_view why) {
    std::string m = key;
    m += ": ";
    m += why;
    errors_->push_back(std::move(m));
  }

  // Calls `fields` for each member of the object at `key`; members not
  // handled (the callback returns false) are reported as unknown.
  void Object(const cJSON* item, const std::string& key,
              const std::function<bool(const std::string& name, const cJSON* value, const std::string& path)>& fields) {
    if (!cJSON_IsObject(item)) {
      Error(key.empty() ? "(root)" : key, "expected an object");
      return;
    }
    for (const cJSON* it = item->child; it != nullptr; it = it->next) {
      std::string path = key.empty() ? std::string(it->string) : key + "." + it->string;
      if (!fields(it->string, it, path)) Error(path, "unknown key");
    }
  }

  void String(const cJSON* v, const std::string& path, std::string* out) {
    if (!cJSON_IsString(v)) return Error(path, "expected a string");
    *out = v->valuestring;
  }
  void Bool(const cJSON* v, const std::string& path, bool* out) {
    if (!cJSON_IsBool(v)) return Error(path, "expected true or false");
    *out = cJSON_IsTrue(v) != 0;
  }
  void Double(const cJSON* v, const std::string& path, double* out) {
    if (!cJSON_IsNumber(v) || !std::isfinite(v->valuedouble)) return Error(path, "expected a number");
    *out = v->valuedouble;
  }
  template <typename T>
  void Integer(const cJSON* v, const std::string& path, T* out) {
    if (!cJSON_IsNumber(v) || std::floor(v->valuedouble) != v->valuedouble) {
      return Error(path, "expected a whole number");
    }
    double d = v->valuedouble;
    // T holds [min, 2^digits): both ends are exact in a double, while T's
    // max is not for 64-bit types (it rounds up to 2^63, which T cannot hold).
    const double upper = std::ldexp(1.0, std::numeric_limits<T>::digits);
    if (d < static_cast<double>(std::numeric_limits<T>::min()) || d >= upper) {
      return Error(path, "out of range");
    }
    *out = static_cast<T>(d);
  }
  void StringList(const cJSON* v, const std::string& path, std::vector<std::string>* out) {
    if (!cJSON_IsArray(v)) return Error(path, "expected an array of strings");
    out->clear();
    size_t i = 0;
    for (const cJSON* it = v->child; it != nullptr; it = it->next, ++i) {
      if (!cJSON_IsString(it)) {
        Error(path + "[" + std::to_string(i) + "]", "expected a string");
        continue;
      }
      out->emplace_back(it->valuestring);
    }
  }
  template <typename T>
  void List(const cJSON* v, const std::string& path, std::vector<T>* out,
            const std::function<void(const cJSON*, const std::string&, T*)>& element) {
    if (!cJSON_IsArray(v)) return Error(path, "expected an array");
    out->clear();
    size_t i = 0;
    for (const cJSON* it = v->child; it != nullptr; it = it->next, ++i) {
      T value{};
      element(it, path + "[" + std::to_string(i) + "]", &value);
      out->push_back(std::move(value));
    }
  }

 private:
  std::vector<std::string>* errors_;
};

// api.listen: each entry is an address string, or {"address", "tls"} for a
// listener with HTTPS.
void ReadListen(ConfigReader* r, const cJSON* v, const std::string& path, ApiConfig* api) {
  if (!cJSON_IsArray(v)) return r->Error(path, "expected an array of addresses");
  api->listen.clear();
  api->listen_tls.clear();
  bool any_tls = false;
  size_t i = 0;
  for (const cJSON* it = v->child; it != nullptr; it = it->next, ++i) {
    const std::string ip = path + "[" + std::to_string(i) + "]";
    if (cJSON_IsString(it)) {
      api->listen.emplace_back(it->valuestring);
      api->listen_tls.emplace_back();
      continue;
    }
    if (!cJSON_IsObject(it)) {
      r->Error(ip, "expected \"HOST:PORT\", \"[IPV6]:PORT\", \"unix:PATH\" or {\"address\", \"tls\"}");
      continue;
    }
    const cJSON* address = cJSON_GetObjectItemCaseSensitive(it, "address");
    ListenTlsConfig tls;
    r->Object(it, ip, [&](const std::string& n, const cJSON* f, const std::string& p) {
      if (n == "address") {
        if (!cJSON_IsString(f)) r->Error(p, "expected a string");
      } else if (n == "tls") {
        tls.enabled = true;
        r->Object(f, p, [&](const std::string& tn, const cJSON* tf, const std::string& tp) {
          if (tn == "cert_file") r->String(tf, tp, &tls.cert_file);
          else if (tn == "key_file") r->String(tf, tp, &tls.key_file);
          else if (tn == "client_ca_file") r->String(tf, tp, &tls.client_ca_file);
          else return false;
          return true;
        });
      } else {
        return false;
      }
      return true;
    });
    if (address == nullptr) r->Error(ip + ".address", "required");
    if (!cJSON_IsString(address)) continue;
    any_tls = any_tls || tls.enabled;
    api->listen.emplace_back(address->valuestring);
    api->listen_tls.push_back(std::move(tls));
  }
  // Without any TLS listener the parallel list stays empty, as by default.
  if (!any_tls) api->listen_tls.clear();
}

}  // namespace

bool ParseConfig(std::string_view json, Config* c, std::vector<std::string>* errors) {
  size_t before = errors->size();
  CjsonPtr root = ParseExact(json);
  if (!root) {
    errors->push_back("(file): not valid JSON");
    return false;
  }
  ConfigReader r(errors);
  r.Object(root.get(), "", [&](const std::string& name, const cJSON* v, const std::string& path) {
    if (name == "node") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "id") r.String(f, p, &c->node.id);
        else if (n == "site") r.String(f, p, &c->node.site);
        else return false;
        return true;
      });
    } else if (name == "storage") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "path") r.String(f, p, &c->storage.path);
        else if (n == "max_bytes") r.Integer(f, p, &c->storage.max_bytes);
        else if (n == "retain_delivered_s") r.Integer(f, p, &c->storage.retain_delivered_s);
        else if (n == "commit_window_us") r.Integer(f, p, &c->storage.commit_window_us);
        else if (n == "intake_log") r.Bool(f, p, &c->storage.intake_log);
        else if (n == "control_reserve_bytes") r.Integer(f, p, &c->storage.control_reserve_bytes);
        else if (n == "wal_checkpoint_bytes") r.Integer(f, p, &c->storage.wal_checkpoint_bytes);
        else if (n == "classes") {
          r.Object(f, p, [&](const std::string& cn, const cJSON* cf, const std::string& cp) {
            Priority prio = Priority::kNormal;
            if (!ParsePriority(cn, &prio)) {
              r.Error(cp, "unknown class (expected control, high, normal or bulk)");
              return true;  // reported here, with the reason
            }
            ClassLimits* out = &c->storage.classes[static_cast<size_t>(prio)];
            r.Object(cf, cp, [&](const std::string& kn, const cJSON* kf, const std::string& kp) {
              if (kn == "max_bytes") {
                r.Integer(kf, kp, &out->max_bytes);
              } else if (kn == "max_count") {
                r.Integer(kf, kp, &out->max_count);
              } else if (kn == "max_age_s") {
                r.Integer(kf, kp, &out->max_age_s);
              } else if (kn == "overflow") {
                std::string policy;
                r.String(kf, kp, &policy);
                if (cJSON_IsString(kf) && !ParseOverflowPolicy(policy, &out->overflow)) {
                  r.Error(kp, "must be \"reject_new\" or \"drop_oldest\"");
                }
              } else {
                return false;
              }
              return true;
            });
            return true;
          });
        }
        else return false;
        return true;
      });
    } else if (name == "api") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "listen") {
          ReadListen(&r, f, p, &c->api);
        } else if (n == "max_event_bytes") {
          r.Integer(f, p, &c->api.max_event_bytes);
        } else if (n == "max_connections") {
          r.Integer(f, p, &c->api.max_connections);
        } else if (n == "anonymous_rate_per_s") {
          r.Double(f, p, &c->api.anonymous_rate_per_s);
        } else if (n == "anonymous_burst") {
          r.Double(f, p, &c->api.anonymous_burst);
        } else if (n == "idempotency_ttl_s") {
          r.Integer(f, p, &c->api.idempotency_ttl_s);
        } else if (n == "idempotency_max_keys") {
          r.Integer(f, p, &c->api.idempotency_max_keys);
        } else if (n == "tokens") {
          r.List<TokenConfig>(f, p, &c->api.tokens, [&](const cJSON* t, const std::string& tp, TokenConfig* out) {
            r.Object(t, tp, [&](const std::string& tn, const cJSON* tf, const std::string& tpp) {
              if (tn == "name") r.String(tf, tpp, &out->name);
              else if (tn == "sha256") r.String(tf, tpp, &out->sha256);
              else if (tn == "allow_types") r.StringList(tf, tpp, &out->allow_types);
              else if (tn == "rate_per_s") r.Double(tf, tpp, &out->rate_per_s);
              else if (tn == "burst") r.Double(tf, tpp, &out->burst);
              else if (tn == "admin") r.Bool(tf, tpp, &out->admin);
              else return false;
              return true;
            });
          });
        } else {
          return false;
        }
        return true;
      });
    } else if (name == "backbone") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "endpoints") {
          r.List<EndpointConfig>(f, p, &c->backbone.endpoints,
                                 [&](const cJSON* e, const std::string& ep, EndpointConfig* out) {
                                   r.Object(e, ep, [&](const std::string& en, const cJSON* ef, const std::string& epp) {
                                     if (en == "name") {
                                       r.String(ef, epp, &out->name);
                                     } else if (en == "host") {
                                       r.String(ef, epp, &out->host);
                                     } else if (en == "port") {
                                       r.Integer(ef, epp, &out->port);
                                     } else if (en == "retain") {
                                       r.Bool(ef, epp, &out->retain);
                                     } else if (en == "username") {
                                       r.String(ef, epp, &out->username);
                                     } else if (en == "password_file") {
                                       r.String(ef, epp, &out->password_file);
                                     } else if (en == "tls") {
                                       EndpointTlsConfig* tls = &out->tls;
                                       tls->enabled = true;
                                       r.Object(ef, epp, [&](const std::string& tn, const cJSON* tf, const std::string& tp) {
                                         if (tn == "ca_file") r.String(tf, tp, &tls->ca_file);
                                         else if (tn == "cert_file") r.String(tf, tp, &tls->cert_file);
                                         else if (tn == "key_file") r.String(tf, tp, &tls->key_file);
                                         else if (tn == "alpn") r.String(tf, tp, &tls->alpn);
                                         else if (tn == "verify_hostname") r.Bool(tf, tp, &tls->verify_hostname);
                                         else if (tn == "server_name") r.String(tf, tp, &tls->server_name);
                                         else return false;
                                         return true;
                                       });
                                     } else {
                                       return false;
                                     }
                                     return true;
                                   });
                                 });
        } else if (n == "protocol") {
          std::string proto;
          r.String(f, p, &proto);
          if (proto == "mqtt5") c->backbone.protocol = MqttProtocol::kMqtt5;
          else if (proto == "mqtt311") c->backbone.protocol = MqttProtocol::kMqtt311;
          else if (cJSON_IsString(f)) r.Error(p, "must be \"mqtt5\" or \"mqtt311\"");
        } else if (n == "topic_prefix") {
          r.String(f, p, &c->backbone.topic_prefix);
        } else if (n == "client_id") {
          r.String(f, p, &c->backbone.client_id);
        } else if (n == "keepalive_s") {
          r.Integer(f, p, &c->backbone.keepalive_s);
        } else if (n == "inflight_window") {
          r.Integer(f, p, &c->backbone.inflight_window);
        } else if (n == "reconnect_min_ms") {
          r.Integer(f, p, &c->backbone.reconnect_min_ms);
        } else if (n == "reconnect_max_ms") {
          r.Integer(f, p, &c->backbone.reconnect_max_ms);
        } else if (n == "return_to_primary_s") {
          r.Integer(f, p, &c->backbone.return_to_primary_s);
        } else if (n == "ack_timeout_s") {
          r.Integer(f, p, &c->backbone.ack_timeout_s);
        } else if (n == "max_bytes_per_s") {
          r.Integer(f, p, &c->backbone.max_bytes_per_s);
        } else {
          return false;
        }
        return true;
      });
    } else if (name == "routes") {
      r.List<RouteConfig>(v, path, &c->routes, [&](const cJSON* rt, const std::string& rp, RouteConfig* out) {
        r.Object(rt, rp, [&](const std::string& n, const cJSON* f, const std::string& p) {
          if (n == "match_type") {
            r.String(f, p, &out->match_type);
          } else if (n == "topic") {
            r.String(f, p, &out->topic);
          } else if (n == "priority") {
            std::string prio;
            r.String(f, p, &prio);
            if (cJSON_IsString(f) && !ParsePriority(prio, &out->priority)) {
              r.Error(p, "must be one of control, high, normal, bulk");
            }
          } else if (n == "ttl_s") {
            r.Integer(f, p, &out->ttl_s);
          } else {
            return false;
          }
          return true;
        });
      });
    } else if (name == "management") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "enabled") r.Bool(f, p, &c->management.enabled);
        else if (n == "require_signed_commands") r.Bool(f, p, &c->management.require_signed_commands);
        else return false;
        return true;
      });
    } else if (name == "log") {
      r.Object(v, path, [&](const std::string& n, const cJSON* f, const std::string& p) {
        if (n == "level") r.String(f, p, &c->log.level);
        else if (n == "format") r.String(f, p, &c->log.format);
        else return false;
        return true;
      });
    } else {
      return false;
    }
    return true;
  });
  ValidateConfig(*c, errors);
  return errors->size() == before;
}

}  // namespace ws
