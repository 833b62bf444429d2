// libFuzzer target: the store's event record decoder, which reads bytes back
// from the SQLite file (possibly damaged). It must refuse bad bytes with
// kDataLoss, never crash or over-allocate, and whatever it accepts must
// encode and decode again to the same event.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/event.h"
#include "tests/fuzz/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // The id the store would keep beside a current-version record.
  ws::Result<ws::Event> e = ws::DecodeEventRecord(in, "fuzz-0001");
  if (!e.ok()) {
    if (e.status().code() != ws::StatusCode::kDataLoss)
      ws::fuzz::Fail("unexpected error code", e.status().ToString(), in);
    return 0;
  }
  std::string again = ws::EncodeEventRecord(*e);
  ws::Result<ws::Event> back = ws::DecodeEventRecord(again, e->id);
  if (!back.ok()) ws::fuzz::Fail("re-encoded record does not decode", back.status().message(), in);
  ws::fuzz::ExpectSameEvent(*e, *back, in);
  // The canonical encoding is never longer than what was read.
  if (again.size() > in.size()) ws::fuzz::Fail("re-encoding grew", std::to_string(again.size()), in);
  return 0;
}
