#include <cmath>

#include "lorakeep/checkpoint_options.h"
#include "lorakeep/error.h"
#include "lorakeep/training_state.h"

namespace lorakeep {

std::string metric_key(const CheckpointOptions& o) {
  if (o.metric_for_best_model.empty()) return "";
  if (o.metric_for_best_model.compare(0, 5, "eval_") == 0) return o.metric_for_best_model;
  return "eval_" + o.metric_for_best_model;
}

bool greater_is_better(const CheckpointOptions& o) {
  if (o.greater_is_better) return *o.greater_is_better;
  const std::string& m = o.metric_for_best_model;
  return !(m.size() >= 4 && m.compare(m.size() - 4, 4, "loss") == 0);
}

void validate(const CheckpointOptions& o) {
  auto fail = [](const std::string& field, const std::string& why) {
    throw Error(ErrorCode::kInvalidArgument, "checkpoint option '" + field + "' " + why);
  };
  if (o.output_dir.empty()) fail("output_dir", "is empty");
  if (o.save_strategy == SaveStrategy::kSteps && o.save_steps <= 0) fail("save_steps", "must be positive");
  if (o.eval_strategy == EvalStrategy::kSteps && o.eval_steps < 0) fail("eval_steps", "must not be negative");
  if (o.eval_strategy == EvalStrategy::kSteps && o.eval_steps == 0 && o.logging_steps <= 0) {
    fail("eval_steps", "is 0 (meaning logging_steps) but logging_steps is not positive");
  }
  if (o.logging_steps < 0) fail("logging_steps", "must not be negative");
  if (o.save_total_limit < 0) fail("save_total_limit", "must not be negative");
  if (o.keep_best < 0) fail("keep_best", "must not be negative");
  if (o.chunk_bytes < 64) fail("chunk_bytes", "must be at least 64");
  if (o.save_strategy == SaveStrategy::kBest && o.metric_for_best_model.empty()) {
    fail("save_strategy", "is 'best' but metric_for_best_model is empty");
  }
  if (o.load_best_model_at_end && o.metric_for_best_model.empty()) {
    fail("load_best_model_at_end", "needs metric_for_best_model");
  }
}

void TrainingState::log(const Metrics& values) {
  Metrics entry = values;
  entry["step"] = static_cast<double>(global_step);
  entry["epoch"] = std::round(epoch * 1e4) / 1e4;  // Trainer rounds to 4 decimals
  log_history.push_back(std::move(entry));
}

void TrainingState::record_evaluation(const Metrics& metrics, std::int64_t samples) {
  if (samples < 0) {
    throw Error(ErrorCode::kInvalidArgument, "record_evaluation: " + std::to_string(samples) +
                                                 " samples (hint: 0 for global values, else this rank's count)");
  }
  log(metrics);
  last_metrics = metrics;
  last_metrics_step = global_step;
  last_metrics_samples = samples;
}

}  // namespace lorakeep
