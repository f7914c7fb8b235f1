// Private to checkpoint/: what the coordinated checkpoint manager computes
// from the ranks' messages, identically on every rank.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "lorakeep/training_state.h"

namespace lorakeep::detail {

// For each key the mean of the ranks' values weighted by their sample counts
// (ranks[r] = {samples, metrics}), NaN if any rank's value is NaN. Throws
// Error(kInvalidArgument) naming a key some rank lacks.
Metrics weighted_mean(const std::vector<std::pair<std::int64_t, Metrics>>& ranks);

}  // namespace lorakeep::detail
