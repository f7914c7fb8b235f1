// lorakeep/training_state.h: the state a training loop shares with its
// callbacks: Hugging Face's TrainerState and TrainerControl in one struct.
// Does not include LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lorakeep {

// One entry of the log history: {"loss": 2.1, "learning_rate": 1e-4} or
// {"eval_loss": 1.9}; "step" and "epoch" are added when it is logged.
using Metrics = std::map<std::string, double>;

// Where the data stands after some optimizer steps: the epoch to train in
// and the batches of it already trained (TrainingState::data_position).
struct DataPosition {
  std::int64_t epoch = 0;            // epochs fully trained: the next epoch's index
  std::int64_t batches_to_skip = 0;  // batches of that epoch already trained
};

// Not thread-safe: owned by the training loop.
struct TrainingState {
  // The run's arguments: the caller's, recorded in trainer_state.json and
  // kept by resume (a run resumed with a larger max_steps trains on).
  std::int64_t max_steps = 0;   // planned steps
  double num_train_epochs = 0;  // planned epochs
  std::int64_t train_batch_size = 0;
  std::int64_t logging_steps = 500;  // CheckpointCallback sets these three from its options
  std::int64_t eval_steps = 500;
  std::int64_t save_steps = 500;

  // progress (restored by resume)
  std::int64_t global_step = 0;  // optimizer steps done
  double epoch = 0;              // fractional epochs done, as Trainer counts them
  std::int64_t num_input_tokens_seen = 0;
  double total_flos = 0;

  // history (restored by resume)
  std::vector<Metrics> log_history;     // in order, each with "step" and "epoch"
  Metrics last_metrics;                 // the latest evaluation
  std::int64_t last_metrics_step = -1;  // the step it was made at

  // best, kept by the checkpoint manager (by step, never by path)
  std::optional<double> best_metric;
  std::optional<std::int64_t> best_global_step;
  std::string best_model_checkpoint;

  // EarlyStopping's state, saved with checkpoints as Trainer's
  // stateful_callbacks entry "EarlyStoppingCallback" and restored on resume.
  struct EarlyStoppingState {
    int patience = 0;
    double threshold = 0;
    int counter = 0;  // evaluations without improvement so far
  };
  std::optional<EarlyStoppingState> early_stopping;

  // control: callbacks set these; the loop (CallbackList::end_step) acts
  bool should_evaluate = false;
  bool should_save = false;
  bool should_log = false;
  bool should_stop = false;

  // Appends `values` to log_history with the current step and epoch.
  void log(const Metrics& values);
  // Logs an evaluation and makes it last_metrics. With several ranks the
  // values must be the job's, equal on every rank (reduce each rank's share
  // with Coordinator::reduce_metrics first).
  void record_evaluation(const Metrics& metrics);

  // What resume restores, as Trainer splits it: progress, history, best and
  // early-stopping state from `saved` (a checkpoint's); this run's
  // arguments (max_steps, num_train_epochs, train_batch_size and the
  // logging / eval / save steps) stay as the caller set them; the control
  // flags are cleared.
  void resume_from(const TrainingState& saved);

  // Where a resumed run picks up its data, derived from global_step as
  // Trainer derives it: with `steps_per_epoch` optimizer steps per epoch
  // (Trainer's num_update_steps_per_epoch), global_step / steps_per_epoch
  // epochs are done, and (global_step % steps_per_epoch) *
  // gradient_accumulation_steps batches of the next one. Exact when the data
  // order depends only on the epoch (a sampler seeded with the epoch, as
  // Trainer's is) and the batch size and number of ranks are the saved run's.
  // Throws Error(kInvalidArgument) for a steps_per_epoch or
  // gradient_accumulation_steps below 1.
  DataPosition data_position(std::int64_t steps_per_epoch, std::int64_t gradient_accumulation_steps = 1) const;
};

}  // namespace lorakeep
