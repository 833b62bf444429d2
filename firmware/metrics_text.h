// Builds the Prometheus text exposition format (version 0.0.4). One family
// at a time: Family() then its samples. Single-threaded value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ws {

class MetricsText {
 public:
  // `type` is "counter" or "gauge".
  MetricsText& Family(std::string_view name, std::string_view type, std::string_view help);
  // `labels` is the inside of {...} already formatted (`class="high"`), or empty.
  MetricsText& Sample(std::string_view labels, double value);
  MetricsText& Sample(std::string_view labels, uint64_t value);
  MetricsText& Sample(std::string_view labels, int64_t value);

  const std::string& text() const { return out_; }

 private:
  void Line(std::string_view labels, std::string_view value);

  std::string out_;
  std::string family_;
};

}  // namespace ws
