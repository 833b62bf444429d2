#include "firmware/metrics_text.h"

#include <cstdio>

namespace ws {

MetricsText& MetricsText::Family(std::string_view name, std::string_view type, std::string_view help) {
  family_ = name;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += help;
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
  return *this;
}

void MetricsText::Line(std::string_view labels, std::string_view value) {
  out_ += family_;
  if (!labels.empty()) {
    out_ += '{';
    out_ += labels;
    out_ += '}';
  }
  out_ += ' ';
  out_ += value;
  out_ += '\n';
}

MetricsText& MetricsText::Sample(std::string_view labels, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", value);
  Line(labels, buf);
  return *this;
}

MetricsText& MetricsText::Sample(std::string_view labels, uint64_t value) {
  Line(labels, std::to_string(value));
  return *this;
}

MetricsText& MetricsText::Sample(std::string_view labels, int64_t value) {
  return Sample(labels, static_cast<double>(value));
}

}  // namespace ws
