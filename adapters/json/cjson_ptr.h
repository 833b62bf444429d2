// RAII owners for cJSON trees and printed strings. Internal to adapters/json.
#pragma once

#include <cjson/cJSON.h>

#include <memory>
#include <string>
#include <string_view>

#include "adapters/json/parse_arena.h"

namespace ws::json_internal {

// A tree parsed in a ParseScope goes with the scope's arena: walking it to
// free each node would only find frees that do nothing.
struct CjsonDeleter {
  void operator()(cJSON* p) const {
    if (!InParseScope(p)) cJSON_Delete(p);
  }
};
using CjsonPtr = std::unique_ptr<cJSON, CjsonDeleter>;

struct CjsonStringDeleter {
  void operator()(char* p) const { cJSON_free(p); }
};

// Prints `item` compactly; "" if cJSON fails to allocate.
inline std::string PrintCompact(const cJSON* item) {
  InstallCjsonHooks();
  std::unique_ptr<char, CjsonStringDeleter> text(cJSON_PrintUnformatted(item));
  return text ? std::string(text.get()) : std::string();
}

// Parses exactly one JSON value: trailing non-space bytes are an error.
inline CjsonPtr ParseExact(std::string_view json) {
  InstallCjsonHooks();
  const char* end = nullptr;
  CjsonPtr root(cJSON_ParseWithLengthOpts(json.data(), json.size(), &end, false));
  if (!root) return nullptr;
  const char* stop = json.data() + json.size();
  while (end != nullptr && end < stop && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')) ++end;
  if (end != stop) return nullptr;
  return root;
}

}  // namespace ws::json_internal
