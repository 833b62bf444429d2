// Decides where an event goes: its backbone topic, its stream (ordering key),
// its priority class and its expiry. Built once from the configuration;
// Route() is const and safe from any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/event.h"
#include "core/priority.h"

namespace ws {

struct RouteDecision {
  std::string topic;
  std::string stream;
  Priority priority = Priority::kNormal;
  int64_t ttl_s = 0;
};

// Glob match where '*' matches any run of characters (including none).
bool GlobMatch(std::string_view pattern, std::string_view text);

class Router {
 public:
  // `prefix` is the expanded topic prefix ("waystation/plant-7/gw-0001").
  Router(std::vector<RouteConfig> routes, std::string prefix, std::string site, std::string node);

  // The first matching route wins; without one: "{prefix}/events/{type}",
  // normal priority, no TTL. The stream is the topic.
  RouteDecision Route(const Event& event) const;

 private:
  std::string Expand(std::string_view tmpl, const Event& event) const;

  std::vector<RouteConfig> routes_;
  std::string prefix_;
  std::string site_;
  std::string node_;
};

// MQTT topic names must not hold wildcards or NUL; events whose type would
// put '+', '#' or '\0' into a topic are refused. Empty levels are allowed by
// MQTT but refused here as a likely mistake.
bool IsValidPublishTopic(std::string_view topic);

}  // namespace ws
