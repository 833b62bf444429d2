#include "core/wall_clock_watch.h"

namespace ws {

int64_t WallClockWatch::Observe(int64_t wall_us, int64_t steady_us) {
  int64_t step = 0;
  if (have_reference_) {
    const int64_t drift = (wall_us - wall_ref_us_) - (steady_us - steady_ref_us_);
    if (drift > threshold_us_ || drift < -threshold_us_) step = drift;
  }
  have_reference_ = true;
  wall_ref_us_ = wall_us;
  steady_ref_us_ = steady_us;
  return step;
}

}  // namespace ws
