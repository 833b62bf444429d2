#include "core/routing.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ws {
namespace {

Event MakeEvent(std::string type, std::string source = "/line-2/press") {
  Event e;
  e.id = "e-1";
  e.type = std::move(type);
  e.source = std::move(source);
  return e;
}

RouteConfig MakeRoute(std::string match, std::string topic, Priority p = Priority::kNormal, int64_t ttl = 0) {
  RouteConfig r;
  r.match_type = std::move(match);
  r.topic = std::move(topic);
  r.priority = p;
  r.ttl_s = ttl;
  return r;
}

TEST(GlobMatchTest, Table) {
  struct Case {
    const char* pattern;
    const char* text;
    bool match;
  };
  const Case cases[] = {
      {"", "", true},
      {"", "a", false},
      {"a", "", false},
      {"*", "", true},
      {"*", "anything.at.all", true},
      {"**", "x", true},
      {"abc", "abc", true},
      {"abc", "abd", false},
      {"abc", "abcd", false},
      {"abc", "ab", false},
      {"sensor.*", "sensor.", true},
      {"sensor.*", "sensor.temp", true},
      {"sensor.*", "sensors.temp", false},
      {"sensor.*", "actuator.sensor.temp", false},
      {"*.alarm", "press.alarm", true},
      {"*.alarm", ".alarm", true},
      {"*.alarm", "press.alarm.cleared", false},
      {"*.alarm", "alarm", false},
      {"a*b*c", "abc", true},
      {"a*b*c", "aXXbYYc", true},
      {"a*b*c", "abcbc", true},
      {"a*b*c", "acb", false},
      {"a*b*c", "abcx", false},
      {"a*b*c", "ab", false},
      {"*b*", "abc", true},
      {"*b*", "ac", false},
      {"*ab", "aab", true},     // needs the matcher to retry after a false start
      {"*aab", "aaab", true},
      {"a*a", "a", false},
      {"com.example.*.cycle", "com.example.press.cycle", true},
      {"com.example.*.cycle", "com.example.press.cycles", false},
      {"Sensor.*", "sensor.x", false},  // case-sensitive
  };
  for (const Case& c : cases) {
    EXPECT_EQ(GlobMatch(c.pattern, c.text), c.match) << '"' << c.pattern << "\" vs \"" << c.text << '"';
  }
}

TEST(GlobMatchTest, LongInputsDoNotBlowUp) {
  // Patterns that make a naive recursive matcher take exponential time. The
  // test is only that these finish (the test timeout catches a blow-up).
  std::string many_a(20'000, 'a');
  EXPECT_FALSE(GlobMatch("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", many_a));
  EXPECT_TRUE(GlobMatch("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a", many_a));
  std::string forty(40, 'a');
  EXPECT_FALSE(GlobMatch("a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", forty));
  std::string long_type = std::string(10'000, 'x') + ".alarm";
  EXPECT_TRUE(GlobMatch("*.alarm", long_type));
  EXPECT_FALSE(GlobMatch("*.alarms", long_type));
}

TEST(RouterTest, DefaultTopicWithoutRoutes) {
  Router router({}, "waystation/plant-7/gw-0001", "plant-7", "gw-0001");
  RouteDecision d = router.Route(MakeEvent("com.example.press.cycle"));
  EXPECT_EQ(d.topic, "waystation/plant-7/gw-0001/events/com.example.press.cycle");
  EXPECT_EQ(d.stream, d.topic);
  EXPECT_EQ(d.priority, Priority::kNormal);
  EXPECT_EQ(d.ttl_s, 0);
}

TEST(RouterTest, DefaultTopicWhenNoRouteMatches) {
  Router router({MakeRoute("alarm.*", "{prefix}/alarms/{type}", Priority::kHigh, 60)}, "p", "s", "n");
  RouteDecision d = router.Route(MakeEvent("telemetry.temp"));
  EXPECT_EQ(d.topic, "p/events/telemetry.temp");
  EXPECT_EQ(d.priority, Priority::kNormal);
  EXPECT_EQ(d.ttl_s, 0);
}

TEST(RouterTest, FirstMatchWins) {
  Router router(
      {
          MakeRoute("alarm.fire.*", "{prefix}/fire/{type}", Priority::kControl, 0),
          MakeRoute("alarm.*", "{prefix}/alarms/{type}", Priority::kHigh, 3600),
          MakeRoute("*", "{prefix}/bulk/{type}", Priority::kBulk, 60),
      },
      "ws/site/node", "site", "node");
  RouteDecision fire = router.Route(MakeEvent("alarm.fire.hall-3"));
  EXPECT_EQ(fire.topic, "ws/site/node/fire/alarm.fire.hall-3");
  EXPECT_EQ(fire.priority, Priority::kControl);
  EXPECT_EQ(fire.ttl_s, 0);

  RouteDecision alarm = router.Route(MakeEvent("alarm.pressure"));
  EXPECT_EQ(alarm.topic, "ws/site/node/alarms/alarm.pressure");
  EXPECT_EQ(alarm.stream, alarm.topic);
  EXPECT_EQ(alarm.priority, Priority::kHigh);
  EXPECT_EQ(alarm.ttl_s, 3600);

  RouteDecision other = router.Route(MakeEvent("telemetry.temp"));
  EXPECT_EQ(other.topic, "ws/site/node/bulk/telemetry.temp");
  EXPECT_EQ(other.priority, Priority::kBulk);
  EXPECT_EQ(other.ttl_s, 60);
}

TEST(RouterTest, ExpandsEveryPlaceholder) {
  Router router({MakeRoute("*", "{site}/{node}/{source}/{type}/{prefix}", Priority::kHigh, 5)}, "pre/fix",
                "plant-7", "gw-0001");
  RouteDecision d = router.Route(MakeEvent("press.cycle", "line-2"));
  EXPECT_EQ(d.topic, "plant-7/gw-0001/line-2/press.cycle/pre/fix");
  EXPECT_EQ(d.stream, d.topic);
}

TEST(RouterTest, PlaceholdersRepeatAndUnknownOnesStayLiteral) {
  Router router({MakeRoute("*", "{type}/{type}/{unknown}/{node")}, "p", "s", "n");
  RouteDecision d = router.Route(MakeEvent("t"));
  EXPECT_EQ(d.topic, "t/t/{unknown}/{node");
  // A brace that opens no placeholder is text, also right before one.
  Router braces({MakeRoute("*", "x{{type}}/{}/{site}}{")}, "p", "s", "n");
  EXPECT_EQ(braces.Route(MakeEvent("t")).topic, "x{t}/{}/s}{");
}

TEST(RouterTest, RouteWithoutTopicUsesDefaultTemplateButKeepsItsClass) {
  Router router({MakeRoute("bulk.*", "", Priority::kBulk, 30)}, "p", "s", "n");
  RouteDecision d = router.Route(MakeEvent("bulk.log"));
  EXPECT_EQ(d.topic, "p/events/bulk.log");
  EXPECT_EQ(d.priority, Priority::kBulk);
  EXPECT_EQ(d.ttl_s, 30);
}

TEST(RouterTest, RouteIsUsableFromManyThreadsAsConst) {
  const Router router({MakeRoute("a.*", "{prefix}/a/{type}")}, "p", "s", "n");
  EXPECT_EQ(router.Route(MakeEvent("a.b")).topic, "p/a/a.b");
  EXPECT_EQ(router.Route(MakeEvent("a.b")).topic, "p/a/a.b");  // no hidden state between calls
}

TEST(PublishTopicTest, Table) {
  struct Case {
    std::string topic;
    bool valid;
  };
  const Case cases[] = {
      {"waystation/plant-7/gw-0001/events/com.example.press", true},
      {"a", true},
      {"a/b", true},
      {"with space/ok", true},
      {"", false},
      {"/", false},
      {"/leading", false},
      {"trailing/", false},
      {"a//b", false},
      {"a/+/b", false},
      {"a/b+c", false},
      {"a/#", false},
      {"a#", false},
      {"+", false},
      {"#", false},
      {std::string("a/\0b", 4), false},
      {std::string(65535, 'x'), true},
      {std::string(65536, 'x'), false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(IsValidPublishTopic(c.topic), c.valid) << '"' << c.topic.substr(0, 40) << '"';
  }
}

TEST(PublishTopicTest, EventTypeWithWildcardMakesDefaultTopicInvalid) {
  Router router({}, "p", "s", "n");
  EXPECT_TRUE(IsValidPublishTopic(router.Route(MakeEvent("press.cycle")).topic));
  EXPECT_FALSE(IsValidPublishTopic(router.Route(MakeEvent("press+cycle")).topic));
  EXPECT_FALSE(IsValidPublishTopic(router.Route(MakeEvent("press/#")).topic));
}

}  // namespace
}  // namespace ws
