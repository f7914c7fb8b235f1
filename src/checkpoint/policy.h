// Which checkpoint is the best, and which ones rotation deletes. Pure
// functions over (step, metric) records: no files, no LibTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace lorakeep::detail {

struct CheckpointRecord {
  std::int64_t step = 0;
  std::optional<double> metric;  // absent: not evaluated at that step, so never the best
};

// Which metric is better: the one comparison behind the best checkpoint, a
// save_strategy of best and early stopping. `metric` is strictly better than
// `than` (greater or smaller, as the metric says); NaN is never better, and a
// number is better than NaN.
bool is_better(double metric, double than, bool greater_is_better);

// Whether `metric` improves on `best`: is_better, or, with no best yet, any
// number (NaN never improves).
bool improves(double metric, std::optional<double> best, bool greater_is_better);

// Steps of the evaluated checkpoints, best first (is_better), ties broken by
// the earlier step. The step decides, never a path string
// ("checkpoint-1000" < "checkpoint-200").
std::vector<std::int64_t> rank_by_metric(const std::vector<CheckpointRecord>& records, bool greater_is_better);

// The checkpoints to delete after a commit, oldest first.
//
//   step (old -> new)     100   200   300   400   500   600
//   metric (min best)     2.1   1.7   1.9   1.8   2.0   1.95
//   newest N=2                                   [500] [600]
//   best K=1                    [200]
//   kept                        200               500   600
//   deleted               100         300   400
//
// Kept: the newest save_total_limit (at least the newest one) and the
// keep_best best (at least the best one, when any checkpoint was evaluated).
// save_total_limit 0 keeps everything.
std::vector<std::int64_t> steps_to_delete(const std::vector<CheckpointRecord>& records, int save_total_limit,
                                          int keep_best, bool greater_is_better);

}  // namespace lorakeep::detail
