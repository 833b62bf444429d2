// JSON codecs on cJSON: CloudEvents structured mode, the configuration file,
// and a small writer for API and status documents. cJSON types never appear
// in this header. Every function is reentrant and safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base64.h"
#include "core/config.h"
#include "core/event.h"
#include "platform/status.h"

namespace ws {

// Parses one event in CloudEvents structured JSON mode
// (application/cloudevents+json). Checks JSON syntax and attribute types
// (strings for the core attributes), then ValidateEvent. `id` may be absent
// when `allow_missing_id` (the caller generates one). Errors are
// kInvalidArgument with a message that starts with the offending attribute,
// except for attributes that are each well-formed but contradict each other
// (both `data` and `data_base64`): kFailedPrecondition.
Result<Event> ParseStructuredEvent(std::string_view json, bool allow_missing_id);

// A JSON array of structured events (application/cloudevents-batch+json).
// The first bad element fails the whole batch: "[3].type: ...".
Result<std::vector<Event>> ParseEventBatch(std::string_view json, bool allow_missing_id, size_t max_events);

// Encodes an event in structured mode.
std::string EncodeStructuredEvent(const Event& event);

// True if `json` is one syntactically valid JSON value (for binary-mode
// bodies declared as JSON).
bool IsValidJson(std::string_view json);

// Parses the configuration file. Unknown keys and wrong types are errors;
// absent keys keep their defaults. Every problem is appended to `errors`
// naming its key; then ValidateConfig runs too. True if there were none.
bool ParseConfig(std::string_view json, Config* config, std::vector<std::string>* errors);

// Builds one JSON document: an object at the root; keys are ignored inside
// arrays. Calls must nest properly (Begin/End pairs).
class JsonWriter {
 public:
  JsonWriter();
  ~JsonWriter();
  JsonWriter(const JsonWriter&) = delete;
  JsonWriter& operator=(const JsonWriter&) = delete;

  JsonWriter& String(std::string_view key, std::string_view value);
  JsonWriter& Int(std::string_view key, int64_t value);
  JsonWriter& Double(std::string_view key, double value);
  JsonWriter& Bool(std::string_view key, bool value);
  JsonWriter& Null(std::string_view key);
  JsonWriter& BeginObject(std::string_view key);
  JsonWriter& BeginArray(std::string_view key);
  JsonWriter& End();

  // The compact JSON text.
  std::string Finish();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// cJSON's version ("1.7.15").
std::string CjsonLibraryVersion();


}  // namespace ws
