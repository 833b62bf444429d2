// Structured logging to stderr (journald picks it up under systemd). One
// write(2) per line, so lines from different threads never interleave. Safe
// from any thread. Not for hot paths at debug level unless enabled.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace ws {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat : int { kText = 0, kJson = 1 };

struct LogField {
  std::string_view key;
  std::string value;
};

// Parses "debug" | "info" | "warn" | "error"; false if unknown.
bool ParseLogLevel(std::string_view name, LogLevel* out);
std::string_view LogLevelName(LogLevel level);

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
void SetLogFormat(LogFormat format);
bool LogEnabled(LogLevel level);

// Emits one line: {"ts":...,"level":...,"component":...,"msg":...,<fields>}
// in JSON format, or "ts LEVEL component: msg key=value ..." in text format.
void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields = {});

// Appends `s` to `out` escaped for a JSON string body (no quotes added).
void AppendJsonEscaped(std::string* out, std::string_view s);

}  // namespace ws

#define WS_LOG_DEBUG(component, ...) \
  do { if (::ws::LogEnabled(::ws::LogLevel::kDebug)) ::ws::Log(::ws::LogLevel::kDebug, component, __VA_ARGS__); } while (0)
#define WS_LOG_INFO(component, ...) ::ws::Log(::ws::LogLevel::kInfo, component, __VA_ARGS__)
#define WS_LOG_WARN(component, ...) ::ws::Log(::ws::LogLevel::kWarn, component, __VA_ARGS__)
#define WS_LOG_ERROR(component, ...) ::ws::Log(::ws::LogLevel::kError, component, __VA_ARGS__)
