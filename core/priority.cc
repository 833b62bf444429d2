#include "core/priority.h"

namespace ws {

std::string_view PriorityName(Priority p) {
  switch (p) {
    case Priority::kControl: return "control";
    case Priority::kHigh: return "high";
    case Priority::kNormal: return "normal";
    case Priority::kBulk: return "bulk";
  }
  return "normal";
}

bool ParsePriority(std::string_view name, Priority* out) {
  for (Priority p : kAllPriorities) {
    if (PriorityName(p) == name) {
      *out = p;
      return true;
    }
  }
  return false;
}

}  // namespace ws
