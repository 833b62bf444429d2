// The first version of the store's event record (every field in full, the
// id and specversion included), as builds before schema 4 wrote it: for
// tests that need a store or record from before the upgrade. Every string
// must be shorter than 128 bytes (one-byte lengths).
#pragma once

#include <string>
#include <string_view>

#include "core/event.h"

namespace ws::testing {

inline std::string EventRecordV1(const Event& e) {
  std::string out(1, '\x01');
  auto put = [&out](std::string_view s) {
    out.push_back(static_cast<char>(s.size()));
    out.append(s);
  };
  put(e.specversion);
  put(e.id);
  put(e.source);
  put(e.type);
  out.push_back(static_cast<char>(e.attributes.size()));
  for (const auto& [k, v] : e.attributes) {
    put(k);
    put(v);
  }
  out.push_back(static_cast<char>(e.data_kind));
  put(e.data);
  return out;
}

}  // namespace ws::testing
