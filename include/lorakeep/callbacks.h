// lorakeep/callbacks.h: training-loop callbacks in the shape of Hugging
// Face's TrainerCallback, for LibTorch loops.
//
//   lorakeep::CheckpointManager ckpt(run.checkpoint);
//   lorakeep::CallbackList callbacks;
//   callbacks.add(std::make_shared<lorakeep::CheckpointCallback>(ckpt, *model, lora, run.callbacks, &optimizer));
//   callbacks.add(std::make_shared<lorakeep::EarlyStopping>(ckpt, /*patience=*/3));
//   callbacks.add(std::make_shared<lorakeep::LoadBestAtEnd>(ckpt, *model, run.callbacks));
//   lorakeep::TrainingState state;
//   callbacks.on_train_begin(state);
//   while (state.global_step < max_steps) {
//     const double loss = train_step();                      // forward, backward, optimizer.step()
//     ++state.global_step;
//     state.log({{"loss", loss}});
//     if (!callbacks.end_step(state, [&] { return lorakeep::Metrics{{"eval_loss", evaluate()}}; })) break;
//   }
//   callbacks.on_train_end(state);                           // the best adapter is back in the model
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/callback_options.h"
#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/training_state.h"

namespace lorakeep {

// One hook per training event; all default to doing nothing.
// Thread-safety: called from the training loop's thread only.
class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin(TrainingState& state) { (void)state; }
  // After each optimizer step (global_step already counts it). Callbacks set
  // state.should_evaluate / should_save / should_stop here.
  virtual void on_step_end(TrainingState& state) { (void)state; }
  // After an evaluation; `metrics` are also in state.last_metrics.
  virtual void on_evaluate(TrainingState& state, const Metrics& metrics) { (void)state, (void)metrics; }
  // The callback that owns checkpoints writes one when state.should_save is
  // set and returns it; everyone else returns nullopt.
  virtual std::optional<CheckpointInfo> save(TrainingState& state) {
    (void)state;
    return std::nullopt;
  }
  // After a checkpoint was committed.
  virtual void on_save(TrainingState& state, const CheckpointInfo& checkpoint) { (void)state, (void)checkpoint; }
  virtual void on_train_end(TrainingState& state) { (void)state; }
};

// Calls callbacks in the order they were added. Not thread-safe.
class CallbackList {
 public:
  void add(std::shared_ptr<Callback> callback);

  void on_train_begin(TrainingState& state);
  void on_step_end(TrainingState& state);
  void on_evaluate(TrainingState& state, const Metrics& metrics);
  void on_save(TrainingState& state, const CheckpointInfo& checkpoint);
  void on_train_end(TrainingState& state);

  // The flow of one step, as Trainer runs it: on_step_end; then, if asked,
  // `evaluate` (its metrics are logged and recorded) and on_evaluate; then,
  // if asked, the save (Callback::save) and on_save. The control flags are
  // cleared as they are acted on. Returns false once training should stop.
  bool end_step(TrainingState& state, const std::function<Metrics()>& evaluate);

 private:
  std::vector<std::shared_ptr<Callback>> callbacks_;
};

// Decides when to evaluate and save (the options' strategies, as Trainer's
// DefaultFlowCallback does), and saves checkpoints through the manager, the
// adapter as `lora` describes it. With options.save_async it saves through
// save_async: on_save then follows the host snapshot, and the write's error
// (if any) is raised by the next save or by on_train_end, which waits for the
// save in flight. on_train_begin records the logging, eval and save steps in
// the state (trainer_state.json has them). Borrows the manager, the model and
// the optimizer: they must outlive it. Throws Error(kInvalidArgument) for
// options that validate() refuses.
class CheckpointCallback : public Callback {
 public:
  CheckpointCallback(CheckpointManager& manager, torch::nn::Module& model, LoraConfig lora, CallbackOptions options,
                     torch::optim::Optimizer* optimizer = nullptr);

  void on_train_begin(TrainingState& state) override;
  void on_step_end(TrainingState& state) override;
  void on_evaluate(TrainingState& state, const Metrics& metrics) override;
  std::optional<CheckpointInfo> save(TrainingState& state) override;
  void on_train_end(TrainingState& state) override;

 private:
  CheckpointManager& manager_;
  torch::nn::Module& model_;
  LoraConfig lora_;
  CallbackOptions options_;
  torch::optim::Optimizer* optimizer_;
  std::int64_t last_epoch_ = 0;
  std::optional<double> best_seen_;
};

// Stops training when the tracked metric has not improved by more than
// `threshold` for `patience` evaluations in a row (Trainer's
// EarlyStoppingCallback: NaN never improves). Its counter is saved with
// checkpoints and restored by resume.
class EarlyStopping : public Callback {
 public:
  EarlyStopping(const CheckpointManager& manager, int patience, double threshold = 0.0);

  void on_train_begin(TrainingState& state) override;
  void on_evaluate(TrainingState& state, const Metrics& metrics) override;

 private:
  std::string key_;
  bool greater_;
  int patience_;
  double threshold_;
  std::optional<double> best_;
};

// At on_train_end, reloads the best checkpoint into the live model through
// CheckpointManager::load_best_into (verified, CPU-first) when the options
// ask for it (load_best_model_at_end), and keeps the report.
class LoadBestAtEnd : public Callback {
 public:
  LoadBestAtEnd(CheckpointManager& manager, torch::nn::Module& model, const CallbackOptions& options);
  void on_train_end(TrainingState& state) override;
  // The reload's report, once it ran.
  const std::optional<TransferReport>& report() const { return report_; }
  const std::optional<CheckpointInfo>& loaded() const { return loaded_; }

 private:
  CheckpointManager& manager_;
  torch::nn::Module& model_;
  bool enabled_;
  std::optional<TransferReport> report_;
  std::optional<CheckpointInfo> loaded_;
};

// Appends every new log_history entry to a JSON-lines file (one object per
// line, flushed), e.g. <output_dir>/metrics.jsonl, and a {"event": "save"}
// line per checkpoint. Throws Error(kIOError) if the file cannot be opened.
class MetricsLogger : public Callback {
 public:
  explicit MetricsLogger(std::string path);
  ~MetricsLogger() override;
  void on_step_end(TrainingState& state) override;
  void on_evaluate(TrainingState& state, const Metrics& metrics) override;
  void on_save(TrainingState& state, const CheckpointInfo& checkpoint) override;
  void on_train_end(TrainingState& state) override;

 private:
  void flush_new(const TrainingState& state);
  std::string path_;
  std::FILE* file_;
  std::size_t written_ = 0;
};

}  // namespace lorakeep
