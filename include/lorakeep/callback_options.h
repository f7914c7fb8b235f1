// lorakeep/callback_options.h: when the training loop's callbacks evaluate,
// save and reload (lorakeep/callbacks.h), with Hugging Face
// TrainingArguments' names. Read by CheckpointCallback and LoadBestAtEnd
// only; what the checkpoint manager itself needs is in
// lorakeep/checkpoint_options.h. Does not include LibTorch.
#pragma once

#include <cstdint>

#include "lorakeep/checkpoint_options.h"

namespace lorakeep {

enum class SaveStrategy {
  kNo,     // never save
  kSteps,  // every save_steps optimizer steps
  kEpoch,  // at the end of every epoch
  kBest,   // whenever an evaluation sets a new best metric
};

enum class EvalStrategy { kNo, kSteps, kEpoch };

struct CallbackOptions {
  // behaviour
  SaveStrategy save_strategy = SaveStrategy::kSteps;
  std::int64_t save_steps = 500;  // kSteps: save every this many steps
  EvalStrategy eval_strategy = EvalStrategy::kNo;
  std::int64_t eval_steps = 0;          // kSteps: 0 means logging_steps, as Trainer
  std::int64_t logging_steps = 500;     // training-loss log entries every this many steps
  bool load_best_model_at_end = false;  // LoadBestAtEnd reloads the best at on_train_end
  bool save_async = false;  // CheckpointCallback saves with save_async: training waits only for a host snapshot
};

// Checks the options, and what they need of the checkpoint manager's
// (a metric for save_strategy best and load_best_model_at_end). Throws
// Error(kInvalidArgument) naming the field.
void validate(const CallbackOptions& options, const CheckpointOptions& checkpoint);

}  // namespace lorakeep
