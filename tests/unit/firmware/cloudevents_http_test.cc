#include "firmware/cloudevents_http.h"

#include <gtest/gtest.h>

namespace ws {
namespace {

HttpRequest Binary(std::vector<std::pair<std::string, std::string>> headers, std::string body = "") {
  HttpRequest r;
  r.method = "POST";
  r.path = "/v1/events";
  r.headers = std::move(headers);
  r.body = std::move(body);
  return r;
}

TEST(BinaryMode, HeadersBecomeAttributesAndBodyTheData) {
  Result<Event> e = ParseBinaryModeEvent(Binary({{"ce-specversion", "1.0"},
                                                 {"ce-id", "b-1"},
                                                 {"ce-source", "/line%2F3"},
                                                 {"ce-type", "com.acme.reading"},
                                                 {"ce-time", "2026-11-21T10:00:00Z"},
                                                 {"content-type", "text/plain; charset=utf-8"}},
                                                "21.5"),
                                         false);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->id, "b-1");
  EXPECT_EQ(e->source, "/line/3");
  EXPECT_EQ(*e->FindAttribute("time"), "2026-11-21T10:00:00Z");
  EXPECT_EQ(*e->FindAttribute("datacontenttype"), "text/plain");
  EXPECT_EQ(e->data_kind, DataKind::kBinary);
  EXPECT_EQ(e->data, "21.5");
}

TEST(BinaryMode, TheEventIsValidatedAndTheHeaderNamed) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::string starts_with;
  };
  const std::vector<Case> cases = {
      {{{"ce-specversion", "1.0"}, {"ce-id", "x"}, {"ce-source", "/s"}}, "", "ce-type:"},
      {{{"ce-specversion", "1.0"}, {"ce-id", "x"}, {"ce-type", "t"}}, "", "ce-source:"},
      {{{"ce-specversion", "0.3"}, {"ce-id", "x"}, {"ce-source", "/s"}, {"ce-type", "t"}}, "", "ce-specversion:"},
      {{{"ce-specversion", "1.0"}, {"ce-source", "/s"}, {"ce-type", "t"}, {"ce-time", "yesterday"}}, "", "ce-time:"},
      {{{"ce-specversion", "1.0"}, {"ce-id", ""}, {"ce-source", "/s"}, {"ce-type", "t"}}, "", "ce-id:"},
      {{{"ce-specversion", "1.0"}, {"ce-type", "a"}, {"ce-type", "b"}, {"ce-source", "/s"}}, "", "ce-type:"},
      {{{"ce-specversion", "1.0"}, {"ce-source", "/s"}, {"ce-type", "t"}, {"ce-Bad_Name", "v"}}, "", "ce-Bad_Name:"},
      {{{"ce-specversion", "1.0"}, {"ce-source", "/s%zz"}, {"ce-type", "t"}}, "", "ce-source:"},
      {{{"ce-specversion", "1.0"}, {"ce-source", "/s"}, {"ce-type", "t"}, {"content-type", "application/json"}},
       "{not json",
       "data:"},
      {{{"ce-source", "/s"}, {"ce-type", "t"}}, "", "ce-specversion:"},
  };
  for (const Case& c : cases) {
    Result<Event> e = ParseBinaryModeEvent(Binary(c.headers, c.body), /*allow_missing_id=*/true);
    ASSERT_FALSE(e.ok()) << c.starts_with;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(e.status().message().rfind(c.starts_with, 0), 0u) << e.status().message();
  }
}

TEST(BinaryMode, MissingIdIsLeftForTheCallerOnlyWhenAllowed) {
  auto req = Binary({{"ce-specversion", "1.0"}, {"ce-source", "/s"}, {"ce-type", "t"}});
  Result<Event> e = ParseBinaryModeEvent(req, true);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE(e->id.empty());
  EXPECT_FALSE(ParseBinaryModeEvent(req, false).ok());
}

TEST(MediaType, ParametersAndBlanksAreDropped) {
  std::string ct = " application/cloudevents+json ; charset=utf-8";
  EXPECT_EQ(MediaTypeOf(&ct), "application/cloudevents+json");
  EXPECT_EQ(MediaTypeOf(nullptr), "");
  EXPECT_TRUE(IsJsonMediaType("application/vnd.acme+json"));
  EXPECT_FALSE(IsJsonMediaType("application/octet-stream"));
}

}  // namespace
}  // namespace ws
