// Private: the one clock lorakeep's reports read.
#pragma once

#include <chrono>

namespace lorakeep::detail {

// Seconds on the monotonic clock, for durations (never wall time).
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace lorakeep::detail
