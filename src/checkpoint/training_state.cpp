#include "lorakeep/training_state.h"

#include <cmath>
#include <string>

#include "lorakeep/error.h"

namespace lorakeep {

void TrainingState::log(const Metrics& values) {
  Metrics entry = values;
  entry["step"] = static_cast<double>(global_step);
  entry["epoch"] = std::round(epoch * 1e4) / 1e4;  // Trainer rounds to 4 decimals
  log_history.push_back(std::move(entry));
}

void TrainingState::record_evaluation(const Metrics& metrics) {
  log(metrics);
  last_metrics = metrics;
  last_metrics_step = global_step;
}

void TrainingState::resume_from(const TrainingState& saved) {
  TrainingState resumed = saved;
  resumed.max_steps = max_steps;
  resumed.num_train_epochs = num_train_epochs;
  resumed.train_batch_size = train_batch_size;
  resumed.logging_steps = logging_steps;
  resumed.eval_steps = eval_steps;
  resumed.save_steps = save_steps;
  resumed.should_evaluate = resumed.should_save = resumed.should_log = resumed.should_stop = false;
  *this = std::move(resumed);
}

DataPosition TrainingState::data_position(std::int64_t steps_per_epoch,
                                          std::int64_t gradient_accumulation_steps) const {
  if (steps_per_epoch < 1 || gradient_accumulation_steps < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "data_position: steps_per_epoch (" + std::to_string(steps_per_epoch) +
                    ") and gradient_accumulation_steps (" + std::to_string(gradient_accumulation_steps) +
                    ") must be at least 1\n  hint: steps_per_epoch is the optimizer steps of one epoch, "
                    "batches per epoch / gradient_accumulation_steps");
  }
  DataPosition position;
  position.epoch = global_step / steps_per_epoch;
  position.batches_to_skip = (global_step % steps_per_epoch) * gradient_accumulation_steps;
  return position;
}

}  // namespace lorakeep
