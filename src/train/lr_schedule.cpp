#include "lorakeep/lr_schedule.h"

#include <algorithm>
#include <string>

#include <torch/optim/optimizer.h>

#include "lorakeep/error.h"

namespace lorakeep {

std::vector<double> learning_rates(const torch::optim::Optimizer& optimizer) {
  std::vector<double> out;
  for (const auto& group : optimizer.param_groups()) out.push_back(group.options().get_lr());
  return out;
}

LinearWarmupSchedule::LinearWarmupSchedule(std::vector<double> peak_lrs, std::int64_t warmup_steps,
                                           std::int64_t training_steps)
    : peak_lrs_(std::move(peak_lrs)), warmup_steps_(warmup_steps), training_steps_(training_steps) {
  if (warmup_steps < 0 || training_steps < 0 || warmup_steps > training_steps) {
    throw Error(ErrorCode::kInvalidArgument, "LinearWarmupSchedule: warmup_steps " + std::to_string(warmup_steps) +
                                                 " and training_steps " + std::to_string(training_steps) +
                                                 "\n  hint: both at least 0, the warmup no longer than the training");
  }
}

// As transformers' _get_linear_schedule_with_warmup_lr_lambda, in the same
// order of operations, so the factors are the same doubles.
double LinearWarmupSchedule::factor(std::int64_t step) const {
  if (step < warmup_steps_) {
    return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup_steps_));
  }
  return std::max(0.0, static_cast<double>(training_steps_ - step) /
                           static_cast<double>(std::max<std::int64_t>(1, training_steps_ - warmup_steps_)));
}

void LinearWarmupSchedule::apply(torch::optim::Optimizer& optimizer, std::int64_t step) const {
  auto& groups = optimizer.param_groups();
  if (groups.size() != peak_lrs_.size()) {
    throw Error(ErrorCode::kInvalidArgument, "LinearWarmupSchedule::apply: the optimizer has " +
                                                 std::to_string(groups.size()) + " param groups, the schedule " +
                                                 std::to_string(peak_lrs_.size()) + " peak learning rates");
  }
  const double f = factor(step);
  for (std::size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(peak_lrs_[i] * f);
}

}  // namespace lorakeep
