#include "adapters/json/json_codec.h"

#include <gtest/gtest.h>

#include <climits>
#include <cmath>

namespace ws {
namespace {

TEST(StructuredEvent, ParsesAttributesExtensionsAndJsonData) {
  Result<Event> e = ParseStructuredEvent(
      R"({"specversion":"1.0","id":"a1","source":"/s","type":"t.x","time":"2026-11-21T10:00:00Z",
          "traceparent":"00-ab-cd-01","count":3,"flag":true,"data":{"k":[1,2]}})",
      false);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->id, "a1");
  EXPECT_EQ(e->type, "t.x");
  ASSERT_NE(e->FindAttribute("traceparent"), nullptr);
  EXPECT_EQ(*e->FindAttribute("traceparent"), "00-ab-cd-01");
  EXPECT_EQ(*e->FindAttribute("count"), "3");
  EXPECT_EQ(*e->FindAttribute("flag"), "true");
  EXPECT_EQ(e->data_kind, DataKind::kJson);
  EXPECT_EQ(e->data, R"({"k":[1,2]})");
}

TEST(StructuredEvent, ExtensionIntegersSpanTheWhole32BitRange) {
  const char* head = R"({"specversion":"1.0","id":"a1","source":"/s","type":"t.x","n":)";
  for (const char* n : {"-2147483648", "2147483647", "0"}) {
    Result<Event> e = ParseStructuredEvent(std::string(head) + n + "}", false);
    ASSERT_TRUE(e.ok()) << n << ": " << e.status().ToString();
    EXPECT_EQ(*e->FindAttribute("n"), n);
  }
  for (const char* n : {"-2147483649", "2147483648", "1.5"}) {
    EXPECT_FALSE(ParseStructuredEvent(std::string(head) + n + "}", false).ok()) << n;
  }
}

TEST(StructuredEvent, DataBase64BecomesBinary) {
  Result<Event> e = ParseStructuredEvent(
      R"({"specversion":"1.0","id":"b","source":"/s","type":"t","datacontenttype":"application/octet-stream",
          "data_base64":"AAEC/w=="})",
      false);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->data_kind, DataKind::kBinary);
  EXPECT_EQ(e->data, std::string("\x00\x01\x02\xff", 4));
}

TEST(StructuredEvent, RejectsWithTheOffendingAttributeFirst) {
  struct Case {
    const char* json;
    const char* field;
  } cases[] = {
      {R"({"id":"a","source":"/s","type":"t"})", "specversion"},
      {R"({"specversion":"0.3","id":"a","source":"/s","type":"t"})", "specversion"},
      {R"({"specversion":"1.0","source":"/s","type":"t"})", "id"},
      {R"({"specversion":"1.0","id":"","source":"/s","type":"t"})", "id"},
      {R"({"specversion":"1.0","id":"a","type":"t"})", "source"},
      {R"({"specversion":"1.0","id":"a","source":"/s"})", "type"},
      {R"({"specversion":"1.0","id":7,"source":"/s","type":"t"})", "id"},
      {R"({"specversion":"1.0","id":"a","source":"/s","type":"t","Bad":"x"})", "Bad"},
      {R"({"specversion":"1.0","id":"a","source":"/s","type":"t","time":"yesterday"})", "time"},
      {R"({"specversion":"1.0","id":"a","source":"/s","type":"t","data_base64":"!!!"})", "data_base64"},
      {R"({"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t"})", "id"},
      {R"({"specversion":"1.0","id":"a","source":"/s","type":"t","ext":{"nested":1}})", "ext"},
  };
  for (const Case& c : cases) {
    Result<Event> e = ParseStructuredEvent(c.json, false);
    ASSERT_FALSE(e.ok()) << c.json;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(e.status().message().rfind(c.field, 0), 0u) << c.json << " -> " << e.status().message();
  }
}

TEST(StructuredEvent, DataAndDataBase64TogetherAreAConflictNotAMalformedEvent) {
  Result<Event> e = ParseStructuredEvent(
      R"({"specversion":"1.0","id":"a","source":"/s","type":"t","data":1,"data_base64":"AA=="})", false);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(e.status().message().rfind("data:", 0), 0u) << e.status().message();

  Result<std::vector<Event>> batch = ParseEventBatch(
      R"([{"specversion":"1.0","source":"/s","type":"t"},
          {"specversion":"1.0","source":"/s","type":"t","data":"x","data_base64":"AA=="}])",
      true, 10);
  ASSERT_FALSE(batch.ok());
  EXPECT_EQ(batch.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(batch.status().message().rfind("[1]: data:", 0), 0u) << batch.status().message();
}

TEST(StructuredEvent, MalformedJsonAndTrailingBytesAreRefused) {
  for (const char* j : {"", "{", "[1,2", R"({"specversion":"1.0"} x)", "nul", "{\"a\":1}{}"}) {
    Result<Event> e = ParseStructuredEvent(j, true);
    ASSERT_FALSE(e.ok()) << j;
    EXPECT_EQ(e.status().message(), "body: not valid JSON") << j;
  }
}

TEST(StructuredEvent, MissingIdAllowedOnlyWhenAsked) {
  const char* j = R"({"specversion":"1.0","source":"/s","type":"t"})";
  EXPECT_FALSE(ParseStructuredEvent(j, false).ok());
  Result<Event> e = ParseStructuredEvent(j, true);
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->id.empty());
}

TEST(StructuredEvent, EncodeThenParseRoundTrips) {
  Event e;
  e.id = "r\"1";
  e.source = "/s\n";
  e.type = "t";
  e.attributes = {{"subject", "x"}, {"traceparent", "00-1-2-01"}};
  for (DataKind kind : {DataKind::kNone, DataKind::kJson, DataKind::kBinary}) {
    e.data_kind = kind;
    e.data = kind == DataKind::kJson ? R"({"a":[true,null,"\u00e9"]})"
                                     : (kind == DataKind::kBinary ? std::string("\0\xfe", 2) : "");
    if (kind == DataKind::kBinary) e.SetAttribute("datacontenttype", "application/octet-stream");
    std::string json = EncodeStructuredEvent(e);
    Result<Event> back = ParseStructuredEvent(json, false);
    ASSERT_TRUE(back.ok()) << json << " " << back.status().ToString();
    EXPECT_EQ(back->id, e.id);
    EXPECT_EQ(back->source, e.source);
    EXPECT_EQ(back->data_kind, e.data_kind);
    EXPECT_EQ(back->data, e.data);  // JSON data exactly as written, escapes included
    EXPECT_EQ(*back->FindAttribute("traceparent"), "00-1-2-01");
  }
}

TEST(EventBatch, AllOrNothingWithIndexInTheError) {
  Result<std::vector<Event>> ok = ParseEventBatch(
      R"([{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}])",
      false, 10);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->size(), 2u);
  Result<std::vector<Event>> bad = ParseEventBatch(
      R"([{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s"}])",
      false, 10);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().rfind("[1]: type", 0), 0u) << bad.status().message();
  EXPECT_FALSE(ParseEventBatch("[]", false, 10).ok());
  EXPECT_FALSE(ParseEventBatch(R"({"specversion":"1.0"})", false, 10).ok());
  Result<std::vector<Event>> many = ParseEventBatch(
      R"([{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}])",
      false, 1);
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.status().code(), StatusCode::kResourceExhausted);
}

TEST(Base64, KnownVectorsAndRejects) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    Result<std::string> d = Base64Decode(Base64Encode(s));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, s);
  }
  for (const char* bad : {"Zg=", "Z===", "Zm9v!A==", "=AAA", "Zg==Zg=="}) EXPECT_FALSE(Base64Decode(bad).ok()) << bad;
}

TEST(StructuredEvent, DataKeepsTheProducersNumbersAndStringsWithoutWhitespace) {
  Result<Event> e = ParseStructuredEvent(
      R"({"specversion":"1.0","id":"1","source":"/s","type":"t",)"
      R"( "data" : { "temp" : 21.50, "big": 12345678901234567890, "e": 1E2,)"
      "\n  \"s\": \"x  }\\\" ]y\", \"a\": [ 1 , {} , [] ] } }",
      false);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->data_kind, DataKind::kJson);
  EXPECT_EQ(e->data, R"({"temp":21.50,"big":12345678901234567890,"e":1E2,"s":"x  }\" ]y","a":[1,{},[]]})");

  // A string as JSON data is the JSON text of the string.
  e = ParseStructuredEvent(R"({"specversion":"1.0","id":"1","source":"/s","type":"t","data":"a b"})", false);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->data, R"("a b")");

  // A key written with escapes still names "data" (through the parser).
  e = ParseStructuredEvent(R"({"specversion":"1.0","id":"1","source":"/s","type":"t","d\u0061ta":{"v": 2}})", false);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->data, R"({"v":2})");
}

TEST(EventBatch, EachEventKeepsItsOwnData) {
  Result<std::vector<Event>> b = ParseEventBatch(
      R"( [ {"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":1.10}},)"
      R"({"specversion":"1.0","id":"2","source":"/s","type":"t","data":[ "]" , 2.0 ]},)"
      R"({"specversion":"1.0","id":"3","source":"/s","type":"t"} ] )",
      false, 10);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->size(), 3u);
  EXPECT_EQ((*b)[0].data, R"({"n":1.10})");
  EXPECT_EQ((*b)[1].data, R"(["]",2.0])");
  EXPECT_EQ((*b)[2].data_kind, DataKind::kNone);
}

TEST(EventBatch, RunsOfBackslashesBeforeAQuoteEndOrContinueAString) {
  // Even runs end the string at the quote, odd runs escape it; the keys and
  // values around them must still be found where the parser found them.
  // The numbers show that the data is the producer's text: the fallback
  // through cJSON's tree would print 1.5.
  Result<std::vector<Event>> b = ParseEventBatch(
      R"([{"specversion":"1.0","id":"a\\","source":"/s\\\"","type":"t",)"
      R"("data": { "p" : "\\", "q": "\\\" , ]", "r" : "\\\\", "n": 1.50 }},)"
      R"({"specversion":"1.0","id":"b\"","source":"/s","type":"t","data":[ "\\" , "\"", 1.50 ]}])",
      false, 10);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->size(), 2u);
  EXPECT_EQ((*b)[0].id, "a\\");
  EXPECT_EQ((*b)[0].source, "/s\\\"");
  EXPECT_EQ((*b)[0].data, R"({"p":"\\","q":"\\\" , ]","r":"\\\\","n":1.50})");
  EXPECT_EQ((*b)[1].id, "b\"");
  EXPECT_EQ((*b)[1].data, R"(["\\","\"",1.50])");
}

TEST(EventBatch, ControlBytesBetweenTokensAreWhitespaceAsForTheParser) {
  static constexpr char kBody[] =
      "\t[\x01\0{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\","
      "\"data\":\x02{\"a\":\x01[1,\x1f"
      "2]}}\0]";
  const std::string body(kBody, sizeof kBody - 1);
  Result<std::vector<Event>> b = ParseEventBatch(body, false, 10);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->size(), 1u);
  EXPECT_EQ((*b)[0].data, R"({"a":[1,2]})");
}

TEST(JsonWriter, NestsAndEscapes) {
  JsonWriter w;
  w.String("a", "q\"\n").Int("n", 42).Bool("b", false).BeginArray("list");
  w.String("", "x").BeginObject("").Int("k", 1).End();
  w.End().BeginObject("o").Null("z").End();
  EXPECT_EQ(w.Finish(), R"({"a":"q\"\n","n":42,"b":false,"list":["x",{"k":1}],"o":{"z":null}})");
}

TEST(JsonWriter, ExactIntegersEscapedControlsAndNumbers) {
  JsonWriter w;
  w.Int("max", INT64_MAX).Int("min", INT64_MIN).Int("seq", 9007199254740993);  // 2^53 + 1: not a double
  w.String("ctl", std::string("a\x01\x1f\0b\t\\", 7)).String("utf8", "gr\xc3\xbc\xc3\x9f");
  w.Double("half", 1.5).Double("three", 3.0).Double("nan", std::nan("")).Double("inf", HUGE_VAL);
  // UTF-8 goes through as it is.
  EXPECT_EQ(w.Finish(), R"({"max":9223372036854775807,"min":-9223372036854775808,"seq":9007199254740993,)"
                        R"("ctl":"a\u0001\u001f\u0000b\t\\","utf8":")"
                        "gr\xc3\xbc\xc3\x9f"
                        R"(","half":1.5,"three":3,"nan":null,"inf":null})");
}

TEST(JsonWriter, FinishClosesWhatIsOpenAndAnExtraEndIsIgnored) {
  JsonWriter w;
  w.End().BeginArray("a").BeginObject("").String("k", "v");
  EXPECT_EQ(w.Finish(), R"({"a":[{"k":"v"}]})");
  JsonWriter empty;
  EXPECT_EQ(empty.Finish(), "{}");
  // Every document it writes parses back.
  EXPECT_TRUE(IsValidJson(w.Finish()));
}

}  // namespace
}  // namespace ws
