// The event envelope: a CloudEvents 1.0 event as Waystation keeps it from the
// producer's request to the backbone. Plain value type; no threads involved.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "platform/status.h"

namespace ws {

// How `Event::data` is to be read.
enum class DataKind : uint8_t {
  kNone = 0,    // no data
  kJson = 1,    // `data` holds the JSON text of a value (structured `data`, JSON content types)
  kBinary = 2,  // `data` holds raw bytes (structured `data_base64`, binary-mode bodies)
};

struct Event {
  std::string specversion = "1.0";
  std::string id;
  std::string source;
  std::string type;
  // Every other context attribute and extension (time, subject,
  // datacontenttype, dataschema, traceparent, ...) as name/value strings, in
  // the order received. Names follow the CloudEvents rules ([a-z0-9]{1,20}).
  std::vector<std::pair<std::string, std::string>> attributes;
  DataKind data_kind = DataKind::kNone;
  std::string data;

  // nullptr if absent.
  const std::string* FindAttribute(std::string_view name) const;
  void SetAttribute(std::string_view name, std::string value);

  // A size estimate for limits: every attribute and the data.
  size_t ApproximateBytes() const;
};

// True for names that CloudEvents allows: 1..20 characters of [a-z0-9].
bool IsValidAttributeName(std::string_view name);

// Checks what CloudEvents 1.0 requires of an event: specversion "1.0",
// non-empty id, source and type, attribute names, `time` in RFC 3339.
// The message names the offending attribute.
Status ValidateEvent(const Event& event);

// True if `s` is an RFC 3339 timestamp (e.g. 2026-11-21T10:00:00Z,
// 2026-11-21T10:00:00.123+01:00).
bool IsRfc3339(std::string_view s);

// The store's compact record of an event (versioned, length-prefixed). The
// current version leaves the id out: the store keeps it beside the record
// and hands it back to Decode (a record of the first version carries its
// own id and ignores `id`). Decode rejects truncated or foreign bytes with
// kDataLoss.
std::string EncodeEventRecord(const Event& event);
Result<Event> DecodeEventRecord(std::string_view record, std::string_view id);
// The same into `*out`, whose strings keep the room they have: decoding
// one event after another into the same Event allocates only when one is
// larger than any before. On an error *out holds part of the record.
Status DecodeEventRecordInto(std::string_view record, std::string_view id, Event* out);
// Whether Decode would read `record`, without making anything of it.
Status CheckEventRecord(std::string_view record);

// Whether the stored record of the event `id` holds the same event as
// `record` (a fresh EncodeEventRecord), also when `stored` was written in an
// older version.
bool SameEventRecord(std::string_view stored, std::string_view id, std::string_view record);

}  // namespace ws
