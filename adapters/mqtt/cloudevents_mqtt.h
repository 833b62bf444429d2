// The CloudEvents MQTT protocol binding (1.0): what an MQTT PUBLISH carries
// for one Event. MQTT 5 uses binary mode (the data is the payload, the
// `datacontenttype` attribute is the Content Type property, every other
// attribute is a User Property); MQTT 3.1.1 has no properties and uses
// structured mode (the whole event as application/cloudevents+json).
// Also the PUBLISH packet sizes, so an event the broker would refuse for its
// Maximum Packet Size is known before it is sent.
//
// Pure functions on plain values; any thread. No libmosquitto types here, so
// the encoding is testable without a broker and the backbone link keeps the
// library calls in one file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base64.h"
#include "core/event.h"

namespace ws {

inline constexpr std::string_view kStructuredContentType = "application/cloudevents+json";

// MQTT 5 binary mode, apart from the payload (which is `event.data`).
struct BinaryModeProperties {
  std::string content_type;  // empty: no Content Type property
  // Name/value views into the event; valid while the event lives.
  std::vector<std::pair<std::string_view, std::string_view>> user_properties;
};

// Content Type = datacontenttype, or application/json for JSON data without
// one; User Properties = specversion, id, source, type, then every other
// attribute in the event's order.
BinaryModeProperties EncodeBinaryMode(const Event& event);

// The binary-mode payload: the JSON text for DataKind::kJson, the bytes for
// kBinary, nothing for kNone.
inline std::string_view BinaryModePayload(const Event& event) { return event.data; }

// The structured-mode JSON object: the required attributes, every other
// attribute as a string member, and `data` (JSON data, inserted as the JSON
// text it is) or `data_base64` (binary data).
std::string EncodeStructuredMode(const Event& event);

// Appends `s` to `out` as a JSON string literal (with quotes). Control
// characters are escaped; bytes that are not valid UTF-8 become U+FFFD, so
// the output is always valid JSON.
void AppendJsonString(std::string* out, std::string_view s);

// Size in bytes of the whole PUBLISH packet (fixed header included) for QoS 1,
// as the broker measures it against its Maximum Packet Size.
uint64_t Mqtt5PublishPacketSize(std::string_view topic, const BinaryModeProperties& properties,
                                uint64_t payload_bytes);
uint64_t Mqtt311PublishPacketSize(std::string_view topic, uint64_t payload_bytes);

}  // namespace ws
