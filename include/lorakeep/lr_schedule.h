// lorakeep/lr_schedule.h: Trainer's default learning-rate schedule
// (transformers' get_linear_schedule_with_warmup): the factor rises linearly
// from 0 to 1 over the warmup steps, then falls linearly to 0 at the last
// training step. A function of the step alone, so a run resumed at
// global_step continues it exactly with nothing saved (Trainer saves
// scheduler.pt, whose last_epoch is its global_step; LibTorch's schedulers
// keep their step count where no one can restore it).
//
//   lorakeep::LinearWarmupSchedule schedule(lorakeep::learning_rates(optimizer), 100, max_steps);
//   ckpt.resume(model, state, &optimizer);     // may replace the optimizer's learning rates
//   while (state.global_step < max_steps) {
//     schedule.apply(optimizer, state.global_step);   // before each optimizer step
//     ...; optimizer.step(); ++state.global_step;
//   }
#pragma once

#include <cstdint>
#include <vector>

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace lorakeep {

// The learning rate of each param group of `optimizer`, in order: the peak
// rates of a schedule, taken before training starts (a resume replaces them
// with the saved run's current rates in LibTorch 2.x).
std::vector<double> learning_rates(const torch::optim::Optimizer& optimizer);

class LinearWarmupSchedule {
 public:
  // `peak_lrs`: one per param group. Throws Error(kInvalidArgument) for
  // negative step counts or a warmup longer than the training.
  LinearWarmupSchedule(std::vector<double> peak_lrs, std::int64_t warmup_steps, std::int64_t training_steps);

  // The multiplier after `step` optimizer steps: step / warmup during the
  // warmup, then (training - step) / (training - warmup), never below 0.
  double factor(std::int64_t step) const;
  // Sets each param group's learning rate to its peak * factor(step): call
  // it before the optimizer step that follows `step` steps. Throws
  // Error(kInvalidArgument) when the optimizer has another number of groups.
  void apply(torch::optim::Optimizer& optimizer, std::int64_t step) const;

 private:
  std::vector<double> peak_lrs_;
  std::int64_t warmup_steps_;
  std::int64_t training_steps_;
};

}  // namespace lorakeep
