// libFuzzer target: the CloudEvents structured-mode decoders that every
// POST /v1/events and /v1/events:batch body goes through. Besides "no crash,
// no sanitizer report", an accepted event must survive our own encoder: what
// we forward in structured mode must decode to the same event.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "adapters/json/json_codec.h"
#include "tests/fuzz/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  for (bool allow_missing_id : {false, true}) {
    ws::Result<ws::Event> e = ws::ParseStructuredEvent(in, allow_missing_id);
    if (!e.ok()) continue;
    ws::Event event = std::move(e).value();
    // JSON data is kept as the producer's text without whitespace: it must
    // still be exactly one JSON value.
    if (event.data_kind == ws::DataKind::kJson && !ws::IsValidJson(event.data)) {
      ws::fuzz::Fail("JSON data is not valid JSON", event.data, in);
    }
    if (event.id.empty()) event.id = "-";  // what the API does: assign one
    std::string encoded = ws::EncodeStructuredEvent(event);
    ws::Result<ws::Event> back = ws::ParseStructuredEvent(encoded, false);
    if (!back.ok()) ws::fuzz::Fail("re-encoded event does not parse", back.status().message(), encoded);
    ws::fuzz::ExpectSameEvent(event, *back, encoded);
  }
  ws::Result<std::vector<ws::Event>> batch = ws::ParseEventBatch(in, true, 1000);
  if (batch.ok() && (batch->empty() || batch->size() > 1000)) ws::fuzz::Fail("batch size out of bounds", "", in);
  return 0;
}
