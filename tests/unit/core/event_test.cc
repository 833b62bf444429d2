#include "core/event.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tests/support/event_record_v1.h"

namespace ws {
namespace {

Event MinimalEvent() {
  Event e;
  e.id = "e-0001";
  e.source = "/plant-7/line-2/press";
  e.type = "com.example.press.cycle";
  return e;
}

Event RichEvent() {
  Event e = MinimalEvent();
  e.SetAttribute("time", "2026-11-21T10:00:00.123456Z");
  e.SetAttribute("datacontenttype", "application/octet-stream");
  e.SetAttribute("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  e.data_kind = DataKind::kBinary;
  for (int i = 0; i < 512; ++i) e.data.push_back(static_cast<char>(i % 256));  // every byte value, NULs included
  return e;
}

void ExpectSameEvent(const Event& a, const Event& b) {
  EXPECT_EQ(a.specversion, b.specversion);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.attributes, b.attributes);
  EXPECT_EQ(a.data_kind, b.data_kind);
  EXPECT_EQ(a.data.size(), b.data.size());
  EXPECT_TRUE(a.data == b.data);
}

std::string StartsWith(const Status& s, std::string_view prefix) {
  if (s.ok()) return "status is OK";
  if (s.message().rfind(prefix, 0) != 0) return "message is \"" + s.message() + "\"";
  return "";
}

TEST(EventTest, MinimalEventIsValid) {
  Status s = ValidateEvent(MinimalEvent());
  EXPECT_TRUE(s.ok()) << s.ToString();
  Status rich = ValidateEvent(RichEvent());
  EXPECT_TRUE(rich.ok()) << rich.ToString();
}

TEST(EventTest, MissingRequiredAttributesAreRejected) {
  struct Case {
    const char* name;
    void (*mutate)(Event*);
  };
  const Case cases[] = {
      {"id", [](Event* e) { e->id.clear(); }},
      {"source", [](Event* e) { e->source.clear(); }},
      {"type", [](Event* e) { e->type.clear(); }},
      {"specversion", [](Event* e) { e->specversion.clear(); }},
  };
  for (const Case& c : cases) {
    Event e = MinimalEvent();
    c.mutate(&e);
    Status s = ValidateEvent(e);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(StartsWith(s, std::string(c.name) + ":"), "") << c.name;
  }
}

TEST(EventTest, WrongSpecVersionIsRejected) {
  for (const char* v : {"0.3", "1", "1.0.0", "2.0", " 1.0"}) {
    Event e = MinimalEvent();
    e.specversion = v;
    Status s = ValidateEvent(e);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << v;
    EXPECT_EQ(StartsWith(s, "specversion:"), "") << v;
  }
}

TEST(EventTest, AttributeNames) {
  EXPECT_TRUE(IsValidAttributeName("time"));
  EXPECT_TRUE(IsValidAttributeName("x"));
  EXPECT_TRUE(IsValidAttributeName("abcdefghij0123456789"));  // 20: the limit
  EXPECT_FALSE(IsValidAttributeName("abcdefghij0123456789k"));  // 21
  EXPECT_FALSE(IsValidAttributeName(""));
  EXPECT_FALSE(IsValidAttributeName("Time"));
  EXPECT_FALSE(IsValidAttributeName("trace-parent"));
  EXPECT_FALSE(IsValidAttributeName("trace_parent"));
  EXPECT_FALSE(IsValidAttributeName("caf\xc3\xa9"));
}

TEST(EventTest, BadAttributeNamesAreRejectedByName) {
  for (const char* name : {"Subject", "abcdefghij0123456789k", "trace-parent", ""}) {
    Event e = MinimalEvent();
    e.SetAttribute(name, "v");
    Status s = ValidateEvent(e);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(StartsWith(s, std::string(name) + ":"), "") << name;
  }
  Event ok = MinimalEvent();
  ok.SetAttribute("abcdefghij0123456789", "v");
  EXPECT_TRUE(ValidateEvent(ok).ok());
}

TEST(EventTest, BadTimeIsRejected) {
  for (const char* t : {"", "yesterday", "2026-11-21", "2026-11-21T10:00:00", "2026-02-30T10:00:00Z"}) {
    Event e = MinimalEvent();
    e.SetAttribute("time", t);
    Status s = ValidateEvent(e);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << t;
    EXPECT_EQ(StartsWith(s, "time:"), "") << t;
  }
}

TEST(EventTest, EmptyOptionalAttributesAreRejected) {
  for (const char* name : {"datacontenttype", "subject", "dataschema"}) {
    Event e = MinimalEvent();
    e.SetAttribute(name, "");
    Status s = ValidateEvent(e);
    EXPECT_EQ(StartsWith(s, std::string(name) + ":"), "") << name;
  }
}

TEST(EventTest, IsRfc3339) {
  struct Case {
    const char* text;
    bool valid;
  };
  const Case cases[] = {
      {"2026-11-21T10:00:00Z", true},
      {"2026-11-21T10:00:00.123Z", true},
      {"2026-11-21T10:00:00.123456789Z", true},
      {"2026-11-21T10:00:00+01:00", true},
      {"2026-11-21T10:00:00.5-05:30", true},
      {"2026-11-21t10:00:00z", true},       // T and Z are case-insensitive
      {"2026-12-31T23:59:60Z", true},       // leap second
      {"2024-02-29T00:00:00Z", true},       // leap year
      {"2000-02-29T00:00:00Z", true},       // divisible by 400: leap year
      {"2026-01-31T00:00:00Z", true},
      {"2026-04-30T23:59:59-23:59", true},
      {"", false},
      {"2026-11-21", false},
      {"2026-11-21T10:00:00", false},       // no offset
      {"2026-11-21 10:00:00Z", false},
      {"2026-11-21T10:00Z", false},
      {"2026-11-21T10:00:00.Z", false},     // empty fraction
      {"2026-11-21T10:00:00+0100", false},
      {"2026-11-21T10:00:00+01", false},
      {"2026-11-21T10:00:00+01:0", false},
      {"2026-11-21T10:00:00+24:00", false},
      {"2026-11-21T10:00:00+01:60", false},
      {"2026-11-21T10:00:00Zjunk", false},
      {"2026-11-21T10:00:00+01:00junk", false},
      {"2026-13-01T10:00:00Z", false},
      {"2026-00-01T10:00:00Z", false},
      {"2026-11-00T10:00:00Z", false},
      {"2026-11-32T10:00:00Z", false},
      {"2026-11-21T24:00:00Z", false},
      {"2026-11-21T10:60:00Z", false},
      {"2026-11-21T10:00:61Z", false},
      {"2026-02-29T00:00:00Z", false},      // 2026 is not a leap year
      {"1900-02-29T00:00:00Z", false},      // divisible by 100, not by 400
      {"2026-02-30T00:00:00Z", false},
      {"2026-04-31T00:00:00Z", false},
      {"2026-06-31T00:00:00Z", false},
      {"2026-09-31T00:00:00Z", false},
      {"2026-11-31T00:00:00Z", false},
      {"26-11-21T10:00:00Z", false},
      {"2026/11/21T10:00:00Z", false},
      {"2026-1-21T10:00:00Z", false},
  };
  for (const Case& c : cases) EXPECT_EQ(IsRfc3339(c.text), c.valid) << '"' << c.text << '"';
}

TEST(EventTest, FindAndSetAttribute) {
  Event e = MinimalEvent();
  EXPECT_EQ(e.FindAttribute("subject"), nullptr);
  e.SetAttribute("subject", "a");
  e.SetAttribute("time", "2026-11-21T10:00:00Z");
  e.SetAttribute("subject", "b");  // replaces in place, keeps order
  ASSERT_EQ(e.attributes.size(), 2u);
  EXPECT_EQ(e.attributes[0], (std::pair<std::string, std::string>{"subject", "b"}));
  ASSERT_NE(e.FindAttribute("subject"), nullptr);
  EXPECT_EQ(*e.FindAttribute("subject"), "b");
}

TEST(EventTest, ApproximateBytesCountsEverything) {
  Event e = MinimalEvent();
  size_t base = e.ApproximateBytes();
  e.data = std::string(1000, 'd');
  e.SetAttribute("subject", std::string(100, 's'));
  EXPECT_GE(e.ApproximateBytes(), base + 1000 + 100 + 7);
}

TEST(EventRecordTest, RoundTripMinimal) {
  Event e = MinimalEvent();
  Result<Event> back = DecodeEventRecord(EncodeEventRecord(e), e.id);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameEvent(*back, e);
}

TEST(EventRecordTest, RoundTripBinaryDataAndManyAttributes) {
  Event e = RichEvent();
  // Values longer than 127 bytes need multi-byte length prefixes.
  for (int i = 0; i < 300; ++i) {
    e.attributes.emplace_back("x" + std::to_string(i), std::string(static_cast<size_t>(i), static_cast<char>('a' + i % 26)));
  }
  e.data += std::string(70'000, '\0');  // three-byte length
  Result<Event> back = DecodeEventRecord(EncodeEventRecord(e), e.id);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameEvent(*back, e);
}

TEST(EventRecordTest, RoundTripEveryDataKind) {
  for (DataKind kind : {DataKind::kNone, DataKind::kJson, DataKind::kBinary}) {
    Event e = MinimalEvent();
    e.data_kind = kind;
    if (kind == DataKind::kJson) e.data = R"({"pressure":4.2,"unit":"bar"})";
    if (kind == DataKind::kBinary) e.data = std::string("\0\x01\xff", 3);
    Result<Event> back = DecodeEventRecord(EncodeEventRecord(e), e.id);
    ASSERT_TRUE(back.ok());
    ExpectSameEvent(*back, e);
  }
}

TEST(EventRecordTest, EveryTruncationIsDataLoss) {
  Event e = RichEvent();
  e.SetAttribute("subject", std::string(200, 's'));
  const std::string record = EncodeEventRecord(e);
  for (size_t len = 0; len < record.size(); ++len) {
    Result<Event> r = DecodeEventRecord(std::string_view(record.data(), len), e.id);
    ASSERT_FALSE(r.ok()) << "prefix of " << len << " bytes decoded";
    ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << len;
  }
  EXPECT_TRUE(DecodeEventRecord(record, e.id).ok());
}

TEST(EventRecordTest, CheckAndDecodeIntoAgreeWithDecodeOnEveryPrefix) {
  Event e = RichEvent();
  e.SetAttribute("subject", std::string(200, 's'));
  const std::string record = EncodeEventRecord(e);
  for (size_t len = 0; len <= record.size(); ++len) {
    const std::string_view prefix(record.data(), len);
    Event into = RichEvent();
    const bool whole = len == record.size();
    EXPECT_EQ(CheckEventRecord(prefix).ok(), whole) << len;
    EXPECT_EQ(DecodeEventRecordInto(prefix, e.id, &into).ok(), whole) << len;
    if (whole) ExpectSameEvent(into, e);
  }
}

TEST(EventRecordTest, WrongVersionIsDataLoss) {
  std::string record = EncodeEventRecord(MinimalEvent());
  for (char v : {'\0', '\x03', '\x7f', '\xff'}) {
    record[0] = v;
    Result<Event> r = DecodeEventRecord(record, "e-0001");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  }
}

TEST(EventRecordTest, TrailingBytesAreDataLoss) {
  std::string record = EncodeEventRecord(MinimalEvent());
  record.push_back('\0');
  EXPECT_EQ(DecodeEventRecord(record, "e-0001").status().code(), StatusCode::kDataLoss);
}

TEST(EventRecordTest, UnknownDataKindIsDataLoss) {
  std::string record = EncodeEventRecord(MinimalEvent());  // ends with kind byte 0, data length 0
  ASSERT_GE(record.size(), 2u);
  record[record.size() - 2] = '\x03';
  EXPECT_EQ(DecodeEventRecord(record, "e-0001").status().code(), StatusCode::kDataLoss);
}

TEST(EventRecordTest, HugeCountsInShortRecordAreDataLoss) {
  // A corrupted attribute count or string length must not drive a huge
  // allocation or read past the end.
  std::string header;
  header.push_back('\x01');
  for (const char* s : {"1.0", "id", "src", "t"}) {
    header.push_back(static_cast<char>(std::string_view(s).size()));
    header += s;
  }
  std::string huge_count = header + std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 9);
  EXPECT_EQ(DecodeEventRecord(huge_count, "id").status().code(), StatusCode::kDataLoss);
  std::string huge_length = header + std::string("\x01\xff\xff\xff\xff\x0f", 6) + "k";
  EXPECT_EQ(DecodeEventRecord(huge_length, "id").status().code(), StatusCode::kDataLoss);
  std::string endless_varint = header + std::string(12, '\xff');
  EXPECT_EQ(DecodeEventRecord(endless_varint, "id").status().code(), StatusCode::kDataLoss);
}

using ws::testing::EventRecordV1;

Event ShortRichEvent() {
  Event e = MinimalEvent();
  e.SetAttribute("time", "2026-11-21T10:00:00Z");
  e.SetAttribute("datacontenttype", "application/json");
  e.SetAttribute("site", "plant-7");
  e.data_kind = DataKind::kJson;
  e.data = R"({"n":1})";
  return e;
}

TEST(EventRecordTest, FirstVersionRecordsStillDecode) {
  const Event e = ShortRichEvent();
  Result<Event> back = DecodeEventRecord(EventRecordV1(e), "ignored: the record has its own id");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameEvent(*back, e);
}

// The link decodes one event after another into one Event: nothing of the
// one before may stay, whichever is larger or has more attributes, and a
// current-version record (which leaves specversion out) must set it.
TEST(EventRecordTest, DecodingIntoAReusedEventLeavesNothingOfTheOneBefore) {
  Event rich = RichEvent();
  for (int i = 0; i < 20; ++i) rich.attributes.emplace_back("x" + std::to_string(i), std::string(50, 'x'));
  rich.data.assign(5000, 'r');
  const Event small = MinimalEvent();
  const Event old = ShortRichEvent();

  Event into;
  into.specversion = "0.3";
  for (const Event* want : std::initializer_list<const Event*>{&small, &rich, &small, &old, &rich, &old, &small}) {
    const bool v1 = want == &old;
    const std::string record = v1 ? EventRecordV1(*want) : EncodeEventRecord(*want);
    ASSERT_TRUE(DecodeEventRecordInto(record, v1 ? "ignored" : want->id, &into).ok());
    ExpectSameEvent(into, *want);
  }
}

TEST(EventRecordTest, CurrentVersionLeavesOutIdSpecversionAndKnownNames) {
  const Event e = ShortRichEvent();
  const std::string v1 = EventRecordV1(e);
  const std::string v2 = EncodeEventRecord(e);
  EXPECT_EQ(v2[0], '\x02');
  EXPECT_EQ(v2.find(e.id), std::string::npos);
  EXPECT_EQ(v2.find("datacontenttype"), std::string::npos);
  EXPECT_NE(v2.find("site"), std::string::npos);  // an extension keeps its name
  // "1.0" and the id with their lengths, and two names less two codes.
  EXPECT_EQ(v1.size() - v2.size(), 4 + 1 + e.id.size() + (4 + 1 - 2) + (15 + 1 - 2));
  Result<Event> back = DecodeEventRecord(v2, e.id);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameEvent(*back, e);
}

TEST(EventRecordTest, WhatTheCurrentVersionCannotSayIsWrittenInTheFirst) {
  Event e = ShortRichEvent();
  e.specversion = "0.3";  // only a decoded record can hold this
  std::string record = EncodeEventRecord(e);
  EXPECT_EQ(record[0], '\x01');
  Result<Event> back = DecodeEventRecord(record, "other");
  ASSERT_TRUE(back.ok());
  ExpectSameEvent(*back, e);

  e = ShortRichEvent();
  e.attributes.emplace_back("", "empty name");
  record = EncodeEventRecord(e);
  EXPECT_EQ(record[0], '\x01');
  back = DecodeEventRecord(record, "other");
  ASSERT_TRUE(back.ok());
  ExpectSameEvent(*back, e);
}

TEST(EventRecordTest, UnknownAttributeCodeIsDataLoss) {
  Event e = MinimalEvent();
  e.SetAttribute("time", "2026-11-21T10:00:00Z");
  std::string record = EncodeEventRecord(e);
  const size_t code = record.find(std::string("\x01\x00\x02", 3));  // count 1, escape, code of "time"
  ASSERT_NE(code, std::string::npos);
  for (char bad : {'\0', '\x09', '\xff'}) {
    record[code + 2] = bad;
    EXPECT_EQ(DecodeEventRecord(record, e.id).status().code(), StatusCode::kDataLoss) << static_cast<int>(bad);
  }
}

TEST(EventRecordTest, SameEventRecordAcrossVersions) {
  const Event e = ShortRichEvent();
  const std::string now = EncodeEventRecord(e);
  EXPECT_TRUE(SameEventRecord(now, e.id, now));
  EXPECT_TRUE(SameEventRecord(EventRecordV1(e), e.id, now));
  Event other = e;
  other.data = R"({"n":2})";
  EXPECT_FALSE(SameEventRecord(EventRecordV1(other), e.id, now));
  EXPECT_FALSE(SameEventRecord(EncodeEventRecord(other), e.id, now));
  EXPECT_FALSE(SameEventRecord("\x01garbage", e.id, now));
}

}  // namespace
}  // namespace ws
