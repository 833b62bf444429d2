// libFuzzer target: CloudEvents HTTP binary mode (ce-* headers + body). The
// input is "name: value" lines, an empty line, then the body, so the fuzzer
// can shape both. An accepted event must be a valid CloudEvent and survive
// the store's record encoding unchanged.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "firmware/cloudevents_http.h"
#include "tests/fuzz/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  ws::HttpRequest req;
  req.method = "POST";
  req.path = "/v1/events";
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (line.empty()) break;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string name(line.substr(0, colon));
    // The HTTP server hands names over lowercased.
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    req.headers.emplace_back(std::move(name), std::string(value));
  }
  req.body = std::string(in);

  for (bool allow_missing_id : {false, true}) {
    ws::Result<ws::Event> e = ws::ParseBinaryModeEvent(req, allow_missing_id);
    if (!e.ok()) {
      if (e.status().code() != ws::StatusCode::kInvalidArgument) {
        ws::fuzz::Fail("unexpected error code", e.status().ToString(), req.body);
      }
      continue;
    }
    ws::Event event = std::move(e).value();
    if (event.id.empty()) {
      if (!allow_missing_id) ws::fuzz::Fail("empty id accepted", "", req.body);
      event.id = "-";
    }
    ws::Status valid = ws::ValidateEvent(event);
    if (!valid.ok()) ws::fuzz::Fail("accepted event is not valid", valid.message(), req.body);
    ws::Result<ws::Event> back = ws::DecodeEventRecord(ws::EncodeEventRecord(event), event.id);
    if (!back.ok()) ws::fuzz::Fail("record does not decode", back.status().message(), req.body);
    ws::fuzz::ExpectSameEvent(event, *back, req.body);
  }
  return 0;
}
