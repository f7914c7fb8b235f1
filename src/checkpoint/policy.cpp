#include "checkpoint/policy.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace lorakeep::detail {

bool is_better(double metric, double than, bool greater_is_better) {
  if (std::isnan(metric)) return false;
  if (std::isnan(than)) return true;
  return greater_is_better ? metric > than : metric < than;
}

bool improves(double metric, std::optional<double> best, bool greater_is_better) {
  if (!best) return !std::isnan(metric);
  return is_better(metric, *best, greater_is_better);
}

std::vector<std::int64_t> rank_by_metric(const std::vector<CheckpointRecord>& records, bool greater_is_better) {
  std::vector<CheckpointRecord> rated;
  for (const CheckpointRecord& r : records) {
    if (r.metric) rated.push_back(r);
  }
  std::stable_sort(rated.begin(), rated.end(),
                   [greater_is_better](const CheckpointRecord& a, const CheckpointRecord& b) {
                     if (is_better(*a.metric, *b.metric, greater_is_better)) return true;
                     if (is_better(*b.metric, *a.metric, greater_is_better)) return false;
                     return a.step < b.step;  // a tie keeps the earlier
                   });
  std::vector<std::int64_t> steps;
  for (const CheckpointRecord& r : rated) steps.push_back(r.step);
  return steps;
}

std::vector<std::int64_t> steps_to_delete(const std::vector<CheckpointRecord>& records, int save_total_limit,
                                          int keep_best, bool greater_is_better) {
  if (save_total_limit <= 0 || records.empty()) return {};
  std::vector<std::int64_t> by_age;
  for (const CheckpointRecord& r : records) by_age.push_back(r.step);
  std::sort(by_age.begin(), by_age.end());
  std::set<std::int64_t> keep;
  const std::size_t newest = static_cast<std::size_t>(std::max(save_total_limit, 1));
  for (std::size_t i = by_age.size() > newest ? by_age.size() - newest : 0; i < by_age.size(); ++i) {
    keep.insert(by_age[i]);
  }
  const std::vector<std::int64_t> ranked = rank_by_metric(records, greater_is_better);
  const std::size_t best = static_cast<std::size_t>(std::max(keep_best, 1));
  for (std::size_t i = 0; i < ranked.size() && i < best; ++i) keep.insert(ranked[i]);
  std::vector<std::int64_t> out;
  for (std::int64_t step : by_age) {
    if (!keep.count(step)) out.push_back(step);
  }
  return out;
}

}  // namespace lorakeep::detail
