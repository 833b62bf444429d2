#include "adapters/mqtt/cloudevents_mqtt.h"

namespace ws {
namespace {

constexpr std::string_view kDataContentType = "datacontenttype";

// Length of an encoded UTF-8 sequence starting at s[i], or 0 if the bytes
// there are not one (overlong forms, surrogates and values above U+10FFFF
// included).
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](size_t k) { return k < s.size() && (at(k) & 0xC0) == 0x80; };
  unsigned char b = at(i);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (b >= 0xE0 && b <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    if (b == 0xE0 && at(i + 1) < 0xA0) return 0;   // overlong
    if (b == 0xED && at(i + 1) > 0x9F) return 0;   // UTF-16 surrogate
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (b == 0xF0 && at(i + 1) < 0x90) return 0;   // overlong
    if (b == 0xF4 && at(i + 1) > 0x8F) return 0;   // above U+10FFFF
    return 4;
  }
  return 0;
}

uint64_t VarintBytes(uint64_t v) {
  if (v < 128) return 1;
  if (v < 16'384) return 2;
  if (v < 2'097'152) return 3;
  return 4;
}

void AppendMember(std::string* out, std::string_view name, std::string_view value) {
  if (out->size() > 1) out->push_back(',');
  AppendJsonString(out, name);
  out->push_back(':');
  AppendJsonString(out, value);
}

}  // namespace

void AppendJsonString(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t n = Utf8SequenceLength(s, i);
      if (n == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out->push_back('"');
}

BinaryModeProperties EncodeBinaryMode(const Event& event) {
  BinaryModeProperties p;
  p.user_properties.reserve(4 + event.attributes.size());
  p.user_properties.emplace_back("specversion", event.specversion);
  p.user_properties.emplace_back("id", event.id);
  p.user_properties.emplace_back("source", event.source);
  p.user_properties.emplace_back("type", event.type);
  for (const auto& [name, value] : event.attributes) {
    if (name == kDataContentType) {
      p.content_type = value;
    } else {
      p.user_properties.emplace_back(name, value);
    }
  }
  if (p.content_type.empty() && event.data_kind == DataKind::kJson) p.content_type = "application/json";
  return p;
}

std::string EncodeStructuredMode(const Event& event) {
  std::string out;
  out.reserve(128 + event.ApproximateBytes() + event.data.size() / 3);
  out.push_back('{');
  AppendMember(&out, "specversion", event.specversion);
  AppendMember(&out, "id", event.id);
  AppendMember(&out, "source", event.source);
  AppendMember(&out, "type", event.type);
  for (const auto& [name, value] : event.attributes) AppendMember(&out, name, value);
  switch (event.data_kind) {
    case DataKind::kNone:
      break;
    case DataKind::kJson:
      // The data was checked to be JSON when it was accepted; it goes in as
      // the value itself, not as a string.
      if (!event.data.empty()) {
        out.append(",\"data\":");
        out.append(event.data);
      }
      break;
    case DataKind::kBinary:
      out.append(",\"data_base64\":\"");
      out.append(Base64Encode(event.data));
      out.push_back('"');
      break;
  }
  out.push_back('}');
  return out;
}

uint64_t Mqtt5PublishPacketSize(std::string_view topic, const BinaryModeProperties& properties,
                                uint64_t payload_bytes) {
  uint64_t props = 0;
  if (!properties.content_type.empty()) props += 1 + 2 + properties.content_type.size();
  for (const auto& [name, value] : properties.user_properties) props += 1 + 2 + name.size() + 2 + value.size();
  // Variable header: topic (length-prefixed), packet id (QoS 1), properties.
  uint64_t remaining = 2 + topic.size() + 2 + VarintBytes(props) + props + payload_bytes;
  return 1 + VarintBytes(remaining) + remaining;
}

uint64_t Mqtt311PublishPacketSize(std::string_view topic, uint64_t payload_bytes) {
  uint64_t remaining = 2 + topic.size() + 2 + payload_bytes;
  return 1 + VarintBytes(remaining) + remaining;
}

}  // namespace ws
