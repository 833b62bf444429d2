#include "platform/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/support/test_support.h"

namespace ws {
namespace {

// Sends fd 2 to a file for the lifetime of the object.
class StderrCapture {
 public:
  StderrCapture() : path_(dir_.File("stderr")) {
    saved_ = ::dup(STDERR_FILENO);
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    EXPECT_GE(saved_, 0);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::dup2(fd, STDERR_FILENO), STDERR_FILENO);
    ::close(fd);
  }
  ~StderrCapture() { Restore(); }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  // Restores stderr and returns what was written to it.
  std::string Finish() {
    Restore();
    return ws::testing::Slurp(path_);
  }

 private:
  void Restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, STDERR_FILENO);
      ::close(saved_);
      saved_ = -1;
    }
  }

  ws::testing::TempDir dir_;
  std::string path_;
  int saved_ = -1;
};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) {
      out.push_back(text.substr(start));  // unterminated: kept so tests can see it
      break;
    }
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

// A strict reader for the flat objects the logger writes:
// {"key":"value",...} with JSON string escapes. False if anything else.
class FlatJson {
 public:
  static bool Parse(const std::string& s, std::vector<std::pair<std::string, std::string>>* out) {
    FlatJson p(s);
    if (!p.Eat('{')) return false;
    if (p.Eat('}')) return p.pos_ == s.size();
    for (;;) {
      std::string k, v;
      if (!p.String(&k) || !p.Eat(':') || !p.String(&v)) return false;
      out->emplace_back(std::move(k), std::move(v));
      if (p.Eat(',')) continue;
      if (!p.Eat('}')) return false;
      return p.pos_ == s.size();
    }
  }

 private:
  explicit FlatJson(const std::string& s) : s_(s) {}
  bool Eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool String(std::string* out) {
    if (!Eat('"')) return false;
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;  // raw control character
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return false;
      char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          if (pos_ + 4 > s_.size()) return false;
          int v = 0;
          for (int i = 0; i < 4; ++i) {
            int h = Hex(s_[pos_++]);
            if (h < 0) return false;
            v = v * 16 + h;
          }
          if (v >= 0x80) return false;  // the logger only escapes control characters
          out->push_back(static_cast<char>(v));
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  const std::string& s_;
  size_t pos_ = 0;
};

const std::string* Find(const std::vector<std::pair<std::string, std::string>>& kv, const std::string& key) {
  for (const auto& [k, v] : kv) {
    if (k == key) return &v;
  }
  return nullptr;
}

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_level_ = GetLogLevel(); }
  void TearDown() override {
    SetLogLevel(saved_level_);
    SetLogFormat(LogFormat::kText);
  }
  LogLevel saved_level_ = LogLevel::kInfo;
};

TEST_F(LogTest, JsonLineIsValidAndEscaped) {
  SetLogFormat(LogFormat::kJson);
  SetLogLevel(LogLevel::kInfo);
  const std::string msg = "say \"hi\"\nthen\tleave \\ now\r\x01";
  StderrCapture cap;
  Log(LogLevel::kWarn, "http", msg, {{"path", "/v1/\"events\""}, {"detail", "line1\nline2"}});
  std::string out = cap.Finish();

  std::vector<std::string> lines = Lines(out);
  ASSERT_EQ(lines.size(), 1u) << out;
  ASSERT_EQ(out.back(), '\n');
  std::vector<std::pair<std::string, std::string>> kv;
  ASSERT_TRUE(FlatJson::Parse(lines[0], &kv)) << lines[0];
  ASSERT_GE(kv.size(), 6u);
  EXPECT_EQ(kv[0].first, "ts");
  ASSERT_NE(Find(kv, "level"), nullptr);
  EXPECT_EQ(*Find(kv, "level"), "warn");
  ASSERT_NE(Find(kv, "component"), nullptr);
  EXPECT_EQ(*Find(kv, "component"), "http");
  ASSERT_NE(Find(kv, "msg"), nullptr);
  EXPECT_EQ(*Find(kv, "msg"), msg);  // escaped on the way out, identical after parsing
  ASSERT_NE(Find(kv, "path"), nullptr);
  EXPECT_EQ(*Find(kv, "path"), "/v1/\"events\"");
  ASSERT_NE(Find(kv, "detail"), nullptr);
  EXPECT_EQ(*Find(kv, "detail"), "line1\nline2");
  // The timestamp is RFC 3339 UTC with microseconds.
  const std::string& ts = kv[0].second;
  ASSERT_EQ(ts.size(), 27u) << ts;
  EXPECT_EQ(ts[10], 'T');
  EXPECT_EQ(ts.back(), 'Z');
}

TEST_F(LogTest, AppendJsonEscaped) {
  std::string out = "x";
  AppendJsonEscaped(&out, std::string_view("a\"b\\c\nd\x1f\x7f\xc3\xa9", 11));
  EXPECT_EQ(out, "xa\\\"b\\\\c\\nd\\u001f\x7f\xc3\xa9");
}

TEST_F(LogTest, LevelFiltering) {
  SetLogFormat(LogFormat::kText);
  SetLogLevel(LogLevel::kWarn);
  EXPECT_FALSE(LogEnabled(LogLevel::kDebug));
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kWarn));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  StderrCapture cap;
  Log(LogLevel::kDebug, "t", "debug-line");
  Log(LogLevel::kInfo, "t", "info-line");
  Log(LogLevel::kWarn, "t", "warn-line");
  Log(LogLevel::kError, "t", "error-line");
  std::string out = cap.Finish();
  EXPECT_EQ(out.find("debug-line"), std::string::npos) << out;
  EXPECT_EQ(out.find("info-line"), std::string::npos) << out;
  EXPECT_NE(out.find("warn-line"), std::string::npos) << out;
  EXPECT_NE(out.find("error-line"), std::string::npos) << out;
  EXPECT_EQ(Lines(out).size(), 2u) << out;
}

TEST_F(LogTest, DisabledDebugMacroDoesNotEvaluateArguments) {
  SetLogLevel(LogLevel::kInfo);
  int evaluated = 0;
  auto expensive = [&] {
    ++evaluated;
    return std::string("costly");
  };
  StderrCapture cap;
  WS_LOG_DEBUG("t", expensive());
  SetLogLevel(LogLevel::kDebug);
  WS_LOG_DEBUG("t", expensive());
  std::string out = cap.Finish();
  EXPECT_EQ(evaluated, 1);
  EXPECT_EQ(Lines(out).size(), 1u) << out;
}

TEST_F(LogTest, TextFormat) {
  SetLogFormat(LogFormat::kText);
  SetLogLevel(LogLevel::kInfo);
  StderrCapture cap;
  Log(LogLevel::kError, "store", "disk full", {{"free", "0"}, {"path", "/var/outbox.db"}});
  std::string out = cap.Finish();
  ASSERT_EQ(Lines(out).size(), 1u) << out;
  EXPECT_NE(out.find("Z error store: disk full free=0 path=/var/outbox.db\n"), std::string::npos) << out;
}

TEST_F(LogTest, TextFormatKeepsOneLinePerMessage) {
  // A message carrying a newline (e.g. an event type from a client) must not
  // start a second, forged log line.
  SetLogFormat(LogFormat::kText);
  SetLogLevel(LogLevel::kInfo);
  StderrCapture cap;
  Log(LogLevel::kInfo, "http", "rejected type a\n2026-01-01T00:00:00.000000Z error forged: x",
      {{"detail", "two\nlines"}});
  std::string out = cap.Finish();
  EXPECT_EQ(Lines(out).size(), 1u) << out;
  EXPECT_NE(out.find("rejected type a\\n2026-01-01T"), std::string::npos) << out;
  EXPECT_NE(out.find("detail=two\\nlines\n"), std::string::npos) << out;
}

TEST_F(LogTest, ConcurrentLinesDoNotInterleave) {
  SetLogFormat(LogFormat::kJson);
  SetLogLevel(LogLevel::kInfo);
  constexpr int kThreads = 4;
  constexpr int kLines = 200;
  StderrCapture cap;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      std::string pad(300, static_cast<char>('a' + t));
      for (int i = 0; i < kLines; ++i) Log(LogLevel::kInfo, "worker", pad, {{"i", std::to_string(i)}});
    });
  }
  for (auto& th : threads) th.join();
  std::string out = cap.Finish();
  std::vector<std::string> lines = Lines(out);
  ASSERT_EQ(lines.size(), size_t{kThreads * kLines});
  for (const std::string& line : lines) {
    std::vector<std::pair<std::string, std::string>> kv;
    ASSERT_TRUE(FlatJson::Parse(line, &kv)) << line;
    const std::string* msg = Find(kv, "msg");
    ASSERT_NE(msg, nullptr);
    ASSERT_EQ(msg->size(), 300u);
    ASSERT_EQ(msg->find_first_not_of((*msg)[0]), std::string::npos) << line;
  }
}

TEST(LogLevelTest, ParseAndName) {
  LogLevel l = LogLevel::kError;
  EXPECT_TRUE(ParseLogLevel("debug", &l));
  EXPECT_EQ(l, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("info", &l));
  EXPECT_EQ(l, LogLevel::kInfo);
  EXPECT_TRUE(ParseLogLevel("warn", &l));
  EXPECT_EQ(l, LogLevel::kWarn);
  EXPECT_TRUE(ParseLogLevel("error", &l));
  EXPECT_EQ(l, LogLevel::kError);
  EXPECT_FALSE(ParseLogLevel("loud", &l));
  EXPECT_FALSE(ParseLogLevel("INFO", &l));
  EXPECT_FALSE(ParseLogLevel("", &l));
  EXPECT_EQ(l, LogLevel::kError);  // untouched on failure
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    LogLevel back = LogLevel::kInfo;
    ASSERT_TRUE(ParseLogLevel(LogLevelName(level), &back));
    EXPECT_EQ(back, level);
  }
}

}  // namespace
}  // namespace ws
