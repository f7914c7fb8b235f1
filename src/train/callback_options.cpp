#include "lorakeep/callback_options.h"

#include "lorakeep/error.h"

namespace lorakeep {

void validate(const CallbackOptions& o, const CheckpointOptions& checkpoint) {
  auto fail = [](const std::string& field, const std::string& why) {
    throw Error(ErrorCode::kInvalidArgument, "checkpoint option '" + field + "' " + why);
  };
  if (o.save_strategy == SaveStrategy::kSteps && o.save_steps <= 0) fail("save_steps", "must be positive");
  if (o.eval_strategy == EvalStrategy::kSteps && o.eval_steps < 0) fail("eval_steps", "must not be negative");
  if (o.eval_strategy == EvalStrategy::kSteps && o.eval_steps == 0 && o.logging_steps <= 0) {
    fail("eval_steps", "is 0 (meaning logging_steps) but logging_steps is not positive");
  }
  if (o.logging_steps < 0) fail("logging_steps", "must not be negative");
  if (o.save_strategy == SaveStrategy::kBest && checkpoint.metric_for_best_model.empty()) {
    fail("save_strategy", "is 'best' but metric_for_best_model is empty");
  }
  if (o.load_best_model_at_end && checkpoint.metric_for_best_model.empty()) {
    fail("load_best_model_at_end", "needs metric_for_best_model");
  }
}

}  // namespace lorakeep
