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

MetricsText& MetricsText::Sample(std::string_view labels, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", value);
  out_ += family_;
  if (!labels.empty()) {
    out_ += '{';
    out_ += labels;
    out_ += '}';
  }
  out_ += ' ';
  out_ += buf;
  out_ += '\n';
  return *this;
}

MetricsText& MetricsText::Sample(std::string_view labels, uint64_t value) {
  out_ += family_;
  if (!labels.empty()) {
    out_ += '{';
    out_ += labels;
    out_ += '}';
  }
  out_ += ' ';
  out_ += std::to_string(value);
  out_ += '\n';
  return *this;
}

MetricsText& MetricsText::Sample(std::string_view labels, int64_t value) {
  return Sample(labels, static_cast<double>(value));
}

}  // namespace ws
