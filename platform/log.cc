#include "platform/log.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>

#include "platform/clock.h"

namespace ws {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};

void WriteAll(std::string_view line) {
  while (!line.empty()) {
    ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere left to report a failure to log
    }
    line.remove_prefix(static_cast<size_t>(n));
  }
}

// Text lines are for people, so only control characters are escaped: a
// newline in a message (often client-supplied, like an event type) would
// otherwise end the line and let the rest pose as a log line of its own.
void AppendTextEscaped(std::string* out, std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      *out += "\\n";
    } else if (c == '\r') {
      *out += "\\r";
    } else if (c == '\t') {
      *out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      *out += buf;
    } else {
      *out += c;
    }
  }
}

}  // namespace

bool ParseLogLevel(std::string_view name, LogLevel* out) {
  if (name == "debug") *out = LogLevel::kDebug;
  else if (name == "info") *out = LogLevel::kInfo;
  else if (name == "warn") *out = LogLevel::kWarn;
  else if (name == "error") *out = LogLevel::kError;
  else return false;
  return true;
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
void SetLogFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

void AppendJsonEscaped(std::string* out, std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (u < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", u);
          *out += buf;
        } else {
          *out += c;
        }
    }
  }
}

void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  char ts[48];
  FormatRfc3339(SystemClock().WallMicros(), ts);
  std::string line;
  line.reserve(128);
  if (static_cast<LogFormat>(g_format.load()) == LogFormat::kJson) {
    line += "{\"ts\":\"";
    line += ts;
    line += "\",\"level\":\"";
    line += LogLevelName(level);
    line += "\",\"component\":\"";
    AppendJsonEscaped(&line, component);
    line += "\",\"msg\":\"";
    AppendJsonEscaped(&line, message);
    line += '"';
    for (const LogField& f : fields) {
      line += ",\"";
      AppendJsonEscaped(&line, f.key);
      line += "\":\"";
      AppendJsonEscaped(&line, f.value);
      line += '"';
    }
    line += "}\n";
  } else {
    line += ts;
    line += ' ';
    line += LogLevelName(level);
    line += ' ';
    AppendTextEscaped(&line, component);
    line += ": ";
    AppendTextEscaped(&line, message);
    for (const LogField& f : fields) {
      line += ' ';
      AppendTextEscaped(&line, f.key);
      line += '=';
      AppendTextEscaped(&line, f.value);
    }
    line += '\n';
  }
  WriteAll(line);
}

}  // namespace ws
