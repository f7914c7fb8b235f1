#include "lorakeep/training_state.h"

#include <cmath>

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

}  // namespace lorakeep
