#include "core/routing.h"

namespace ws {
namespace {

constexpr std::string_view kDefaultTopic = "{prefix}/events/{type}";

}  // namespace

bool GlobMatch(std::string_view pattern, std::string_view text) {
  // Iterative matcher with one backtrack point: linear for the patterns
  // routes use, never exponential.
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Router::Router(std::vector<RouteConfig> routes, std::string prefix, std::string site, std::string node)
    : routes_(std::move(routes)), prefix_(std::move(prefix)), site_(std::move(site)), node_(std::move(node)) {}

std::string Router::Expand(std::string_view tmpl, const Event& event) const {
  std::string out;
  out.reserve(tmpl.size() + event.type.size() + prefix_.size());
  size_t i = 0;
  while (i < tmpl.size()) {
    const size_t open = tmpl.find('{', i);
    if (open == std::string_view::npos) break;
    const size_t close = tmpl.find('}', open);
    if (close == std::string_view::npos) break;
    const std::string_view key = tmpl.substr(open + 1, close - open - 1);
    const std::string* value = nullptr;
    if (key == "prefix") value = &prefix_;
    else if (key == "type") value = &event.type;
    else if (key == "source") value = &event.source;
    else if (key == "site") value = &site_;
    else if (key == "node") value = &node_;
    if (value == nullptr) {
      // Not a placeholder: the brace is text, and the search goes on after it.
      out.append(tmpl.substr(i, open + 1 - i));
      i = open + 1;
      continue;
    }
    out.append(tmpl.substr(i, open - i));
    out += *value;
    i = close + 1;
  }
  out.append(tmpl.substr(i));
  return out;
}

RouteDecision Router::Route(const Event& event) const {
  RouteDecision d;
  const RouteConfig* match = nullptr;
  for (const RouteConfig& r : routes_) {
    if (GlobMatch(r.match_type, event.type)) {
      match = &r;
      break;
    }
  }
  if (match != nullptr) {
    d.topic = Expand(match->topic.empty() ? kDefaultTopic : std::string_view(match->topic), event);
    d.priority = match->priority;
    d.ttl_s = match->ttl_s;
  } else {
    d.topic = Expand(kDefaultTopic, event);
  }
  d.stream = d.topic;
  return d;
}

bool IsValidPublishTopic(std::string_view topic) {
  if (topic.empty() || topic.size() > 65535) return false;
  size_t level_start = 0;
  for (size_t i = 0; i <= topic.size(); ++i) {
    if (i == topic.size() || topic[i] == '/') {
      if (i == level_start) return false;  // empty level
      level_start = i + 1;
      continue;
    }
    char c = topic[i];
    if (c == '+' || c == '#' || c == '\0') return false;
  }
  return true;
}

}  // namespace ws
