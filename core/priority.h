// Priority classes of the outbox. Lower value drains first.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace ws {

enum class Priority : uint8_t { kControl = 0, kHigh = 1, kNormal = 2, kBulk = 3 };
inline constexpr int kPriorityCount = 4;
inline constexpr std::array<Priority, kPriorityCount> kAllPriorities = {Priority::kControl, Priority::kHigh,
                                                                         Priority::kNormal, Priority::kBulk};

std::string_view PriorityName(Priority p);
// "control" | "high" | "normal" | "bulk"; false if unknown.
bool ParsePriority(std::string_view name, Priority* out);

}  // namespace ws
