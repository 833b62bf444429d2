// libFuzzer target: the store's event record decoder, which reads bytes back
// from the SQLite file (possibly damaged). It must refuse bad bytes with
// kDataLoss, never crash or over-allocate, and whatever it accepts must
// encode and decode again to the same event. CheckEventRecord must accept
// exactly what it accepts, and DecodeEventRecordInto, into an Event that
// held another event before (as the link's reused one does), must give the
// same event.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/event.h"
#include "tests/fuzz/fuzz_checks.h"

namespace {

// An event unlike most inputs: more attributes, longer strings, binary data.
ws::Event Previous() {
  ws::Event p;
  p.id = "previous-event-with-a-long-id-0000000000";
  p.source = "/previous/source/that/is/long/enough/to/be/on/the/heap";
  p.type = "com.example.previous.event.type";
  for (int i = 0; i < 6; ++i) p.attributes.emplace_back("ext" + std::to_string(i), std::string(40, 'v'));
  p.data_kind = ws::DataKind::kBinary;
  p.data.assign(300, 'd');
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // The id the store would keep beside a current-version record.
  ws::Result<ws::Event> e = ws::DecodeEventRecord(in, "fuzz-0001");
  const ws::Status checked = ws::CheckEventRecord(in);
  ws::Event into = Previous();
  const ws::Status decoded_into = ws::DecodeEventRecordInto(in, "fuzz-0001", &into);
  if (checked.ok() != e.ok() || decoded_into.ok() != e.ok()) {
    ws::fuzz::Fail("Decode, DecodeInto and Check disagree",
                   e.status().ToString() + " / " + decoded_into.ToString() + " / " + checked.ToString(), in);
  }
  if (!e.ok()) {
    if (e.status().code() != ws::StatusCode::kDataLoss)
      ws::fuzz::Fail("unexpected error code", e.status().ToString(), in);
    return 0;
  }
  ws::fuzz::ExpectSameEvent(*e, into, in);
  std::string again = ws::EncodeEventRecord(*e);
  ws::Result<ws::Event> back = ws::DecodeEventRecord(again, e->id);
  if (!back.ok()) ws::fuzz::Fail("re-encoded record does not decode", back.status().message(), in);
  ws::fuzz::ExpectSameEvent(*e, *back, in);
  // The canonical encoding is never longer than what was read.
  if (again.size() > in.size()) ws::fuzz::Fail("re-encoding grew", std::to_string(again.size()), in);
  return 0;
}
