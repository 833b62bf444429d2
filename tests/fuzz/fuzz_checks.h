// Shared checks for the fuzz targets: a failed property aborts (libFuzzer
// then keeps the input as a crash artifact). Test code only.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/event.h"

namespace ws::fuzz {

[[noreturn]] inline void Fail(std::string_view what, std::string_view detail, std::string_view input) {
  std::fprintf(stderr, "fuzz property failed: %.*s: %.*s\ninput (%zu bytes): %.*s\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(detail.size()), detail.data(), input.size(),
               static_cast<int>(input.size() > 400 ? 400 : input.size()), input.data());
  std::abort();
}

inline void ExpectSameEvent(const Event& a, const Event& b, std::string_view context) {
  if (a.specversion != b.specversion) Fail("specversion differs", b.specversion, context);
  if (a.id != b.id) Fail("id differs", b.id, context);
  if (a.source != b.source) Fail("source differs", b.source, context);
  if (a.type != b.type) Fail("type differs", b.type, context);
  if (a.attributes != b.attributes) Fail("attributes differ", "", context);
  if (a.data_kind != b.data_kind) Fail("data kind differs", "", context);
  if (a.data != b.data) Fail("data differs", b.data, context);
}

}  // namespace ws::fuzz
