// The CloudEvents MQTT binding encoders: what a subscriber on the backbone
// reads for a given event, in both modes.
#include "adapters/mqtt/cloudevents_mqtt.h"

#include <string>

#include <gtest/gtest.h>

namespace ws {
namespace {

Event SampleEvent() {
  Event e;
  e.id = "evt-1";
  e.source = "/line/3";
  e.type = "com.acme.reading";
  e.SetAttribute("time", "2026-11-21T10:00:00Z");
  e.SetAttribute("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  e.data_kind = DataKind::kJson;
  e.data = R"({"temp":21.5})";
  return e;
}

TEST(CloudEventsMqttBinaryMode, AttributesBecomeUserPropertiesAndDataIsThePayload) {
  Event e = SampleEvent();
  BinaryModeProperties p = EncodeBinaryMode(e);
  EXPECT_EQ(p.content_type, "application/json");
  ASSERT_EQ(p.user_properties.size(), 6u);
  EXPECT_EQ(p.user_properties[0], (std::pair<std::string_view, std::string_view>("specversion", "1.0")));
  EXPECT_EQ(p.user_properties[1], (std::pair<std::string_view, std::string_view>("id", "evt-1")));
  EXPECT_EQ(p.user_properties[2], (std::pair<std::string_view, std::string_view>("source", "/line/3")));
  EXPECT_EQ(p.user_properties[3], (std::pair<std::string_view, std::string_view>("type", "com.acme.reading")));
  EXPECT_EQ(p.user_properties[4].first, "time");
  EXPECT_EQ(p.user_properties[5].second, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  EXPECT_EQ(BinaryModePayload(e), R"({"temp":21.5})");
}

TEST(CloudEventsMqttBinaryMode, DataContentTypeIsTheContentTypePropertyNotAUserProperty) {
  Event e = SampleEvent();
  e.SetAttribute("datacontenttype", "application/vnd.acme+json");
  BinaryModeProperties p = EncodeBinaryMode(e);
  EXPECT_EQ(p.content_type, "application/vnd.acme+json");
  for (const auto& [name, value] : p.user_properties) EXPECT_NE(name, "datacontenttype");

  Event bin;
  bin.id = "b";
  bin.source = "/s";
  bin.type = "t";
  bin.data_kind = DataKind::kBinary;
  bin.data = std::string("\x00\x01\xff", 3);
  EXPECT_EQ(EncodeBinaryMode(bin).content_type, "");  // no type claimed for opaque bytes
  EXPECT_EQ(BinaryModePayload(bin).size(), 3u);
}

TEST(CloudEventsMqttStructuredMode, IsCloudEventsJsonWithDataAsJsonValue) {
  EXPECT_EQ(EncodeStructuredMode(SampleEvent()),
            R"({"specversion":"1.0","id":"evt-1","source":"/line/3","type":"com.acme.reading",)"
            R"("time":"2026-11-21T10:00:00Z","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",)"
            R"("data":{"temp":21.5}})");
}

TEST(CloudEventsMqttStructuredMode, BinaryDataTravelsAsBase64AndNoDataMeansNoMember) {
  Event e;
  e.id = "b";
  e.source = "/s";
  e.type = "t";
  e.data_kind = DataKind::kBinary;
  e.data = std::string("\x00\xfb\xff", 3);
  EXPECT_EQ(EncodeStructuredMode(e), R"({"specversion":"1.0","id":"b","source":"/s","type":"t","data_base64":"APv/"})");
  e.data_kind = DataKind::kNone;
  e.data.clear();
  EXPECT_EQ(EncodeStructuredMode(e), R"({"specversion":"1.0","id":"b","source":"/s","type":"t"})");
}

TEST(CloudEventsMqttStructuredMode, StringsAreEscapedAndAlwaysValidUtf8) {
  Event e;
  e.id = "quote\"back\\slash\nnl\ttab\x01";
  e.source = "caf\xc3\xa9";   // valid UTF-8 passes through
  e.type = "bad\xff\xc3";     // invalid bytes become U+FFFD
  std::string json = EncodeStructuredMode(e);
  EXPECT_NE(json.find(R"("id":"quote\"back\\slash\nnl\ttab\u0001")"), std::string::npos) << json;
  EXPECT_NE(json.find("\"source\":\"caf\xc3\xa9\""), std::string::npos) << json;
  EXPECT_NE(json.find(R"("type":"bad\ufffd\ufffd")"), std::string::npos) << json;
}

TEST(CloudEventsMqttPacketSize, CountsHeaderTopicPacketIdPropertiesAndPayload) {
  BinaryModeProperties none;
  // 1 fixed header + 1 length + (2 + 3 topic + 2 id + 1 props length + 0) + 5 payload
  EXPECT_EQ(Mqtt5PublishPacketSize("a/b", none, 5), 1u + 1u + 2u + 3u + 2u + 1u + 5u);
  EXPECT_EQ(Mqtt311PublishPacketSize("a/b", 5), 1u + 1u + 2u + 3u + 2u + 5u);
  BinaryModeProperties p;
  p.content_type = "x";                      // 1 + 2 + 1
  p.user_properties.emplace_back("k", "vv");  // 1 + 2 + 1 + 2 + 2
  EXPECT_EQ(Mqtt5PublishPacketSize("t", p, 0), 1u + 1u + 2u + 1u + 2u + 1u + 4u + 8u);
  // A remaining length of 200 takes two bytes.
  EXPECT_EQ(Mqtt311PublishPacketSize("t", 195), 1u + 2u + 2u + 1u + 2u + 195u);
}

}  // namespace
}  // namespace ws
