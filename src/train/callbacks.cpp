#include "lorakeep/callbacks.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "base/logging.h"
#include "checkpoint/policy.h"

namespace lorakeep {

void CallbackList::add(std::shared_ptr<Callback> callback) { callbacks_.push_back(std::move(callback)); }

void CallbackList::on_train_begin(TrainingState& state) {
  for (auto& c : callbacks_) c->on_train_begin(state);
}

void CallbackList::on_step_end(TrainingState& state) {
  for (auto& c : callbacks_) c->on_step_end(state);
}

void CallbackList::on_evaluate(TrainingState& state, const Metrics& metrics) {
  for (auto& c : callbacks_) c->on_evaluate(state, metrics);
}

void CallbackList::on_save(TrainingState& state, const CheckpointInfo& checkpoint) {
  for (auto& c : callbacks_) c->on_save(state, checkpoint);
}

void CallbackList::on_train_end(TrainingState& state) {
  for (auto& c : callbacks_) c->on_train_end(state);
}

bool CallbackList::end_step(TrainingState& state, const std::function<Metrics()>& evaluate) {
  on_step_end(state);
  if (state.should_evaluate) {
    state.should_evaluate = false;
    if (!evaluate) throw Error(ErrorCode::kInvalidArgument, "an evaluation is due but no evaluate function was given");
    const Metrics metrics = evaluate();
    state.record_evaluation(metrics);
    on_evaluate(state, metrics);
  }
  if (state.should_save) {
    for (auto& c : callbacks_) {
      if (auto saved = c->save(state)) {
        state.should_save = false;
        on_save(state, *saved);
        break;
      }
    }
    state.should_save = false;
  }
  return !state.should_stop;
}

// ---------------------------------------------------------------------------

CheckpointCallback::CheckpointCallback(CheckpointManager& manager, torch::nn::Module& model, LoraConfig lora,
                                       CallbackOptions options, torch::optim::Optimizer* optimizer)
    : manager_(manager), model_(model), lora_(std::move(lora)), options_(options), optimizer_(optimizer) {
  validate(options_, manager_.options());
}

void CheckpointCallback::on_train_begin(TrainingState& state) {
  state.logging_steps = options_.logging_steps;
  state.eval_steps = options_.eval_steps > 0 ? options_.eval_steps : options_.logging_steps;
  state.save_steps = options_.save_steps;
}

void CheckpointCallback::on_step_end(TrainingState& state) {
  const CallbackOptions& o = options_;
  const std::int64_t step = state.global_step;
  const std::int64_t epoch = static_cast<std::int64_t>(std::floor(state.epoch + 1e-9));
  const bool epoch_ended = epoch > last_epoch_;
  last_epoch_ = epoch;
  const std::int64_t eval_every = o.eval_steps > 0 ? o.eval_steps : o.logging_steps;
  if ((o.eval_strategy == EvalStrategy::kSteps && eval_every > 0 && step % eval_every == 0) ||
      (o.eval_strategy == EvalStrategy::kEpoch && epoch_ended)) {
    state.should_evaluate = true;
  }
  if ((o.save_strategy == SaveStrategy::kSteps && step % o.save_steps == 0) ||
      (o.save_strategy == SaveStrategy::kEpoch && epoch_ended)) {
    state.should_save = true;
  }
  if (state.max_steps > 0 && step >= state.max_steps) {
    // The last step: evaluate and save if the strategies ever would.
    state.should_evaluate = state.should_evaluate || o.eval_strategy != EvalStrategy::kNo;
    state.should_save = state.should_save || o.save_strategy == SaveStrategy::kSteps ||
                        o.save_strategy == SaveStrategy::kEpoch;
  }
}

void CheckpointCallback::on_evaluate(TrainingState& state, const Metrics& metrics) {
  if (options_.save_strategy != SaveStrategy::kBest) return;
  auto it = metrics.find(manager_.metric_key());
  if (it == metrics.end()) return;
  if (detail::improves(it->second, best_seen_, manager_.greater_is_better())) {
    best_seen_ = it->second;
    state.should_save = true;
  }
}

std::optional<CheckpointInfo> CheckpointCallback::save(TrainingState& state) {
  if (options_.save_async) return manager_.save_async(model_, lora_, state, optimizer_).checkpoint;
  return manager_.save(model_, lora_, state, optimizer_);
}

void CheckpointCallback::on_train_end(TrainingState& state) { manager_.wait(state); }

// ---------------------------------------------------------------------------

EarlyStopping::EarlyStopping(const CheckpointManager& manager, int patience, double threshold)
    : key_(manager.metric_key()), greater_(manager.greater_is_better()), patience_(patience), threshold_(threshold) {
  if (patience < 1) throw Error(ErrorCode::kInvalidArgument, "early stopping patience must be at least 1");
  if (key_.empty()) throw Error(ErrorCode::kInvalidArgument, "early stopping needs metric_for_best_model");
}

void EarlyStopping::on_train_begin(TrainingState& state) {
  // A resumed run continues its count; a fresh one starts at zero.
  if (!state.early_stopping) state.early_stopping = TrainingState::EarlyStoppingState{patience_, threshold_, 0};
  state.early_stopping->patience = patience_;
  state.early_stopping->threshold = threshold_;
  best_ = state.best_metric;
}

void EarlyStopping::on_evaluate(TrainingState& state, const Metrics& metrics) {
  auto it = metrics.find(key_);
  if (it == metrics.end()) {
    detail::log_warn("early stopping: the evaluation has no '{}'; not counting it", key_);
    return;
  }
  const double v = it->second;
  const bool improved = detail::improves(v, best_, greater_) && (!best_ || std::fabs(v - *best_) > threshold_);
  TrainingState::EarlyStoppingState& es = *state.early_stopping;
  if (improved) {
    best_ = v;
    es.counter = 0;
  } else if (++es.counter >= patience_) {
    detail::log_info("early stopping at step {}: no improvement of {} for {} evaluations", state.global_step, key_,
                     es.counter);
    state.should_stop = true;
  }
}

// ---------------------------------------------------------------------------

LoadBestAtEnd::LoadBestAtEnd(CheckpointManager& manager, torch::nn::Module& model, const CallbackOptions& options)
    : manager_(manager), model_(model), enabled_(options.load_best_model_at_end) {
  validate(options, manager_.options());
}

void LoadBestAtEnd::on_train_end(TrainingState& state) {
  if (!enabled_) return;
  loaded_ = manager_.best();
  report_ = manager_.load_best_into(model_);
  (void)state;
}

// ---------------------------------------------------------------------------

MetricsLogger::MetricsLogger(std::string path) : path_(std::move(path)), file_(std::fopen(path_.c_str(), "a")) {
  if (file_ == nullptr) {
    throw Error(ErrorCode::kIOError, "cannot open metrics log '" + path_ + "': " + std::strerror(errno));
  }
}

MetricsLogger::~MetricsLogger() {
  if (file_ != nullptr && std::fclose(file_) != 0) detail::log_warn("cannot close '{}'", path_);
}

void MetricsLogger::flush_new(const TrainingState& state) {
  for (; written_ < state.log_history.size(); ++written_) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : state.log_history[written_]) {
      if (!std::isfinite(v)) j[k] = nullptr;
      else if (k == "step") j[k] = static_cast<std::int64_t>(v);
      else j[k] = v;
    }
    const std::string line = j.dump() + "\n";
    std::fwrite(line.data(), 1, line.size(), file_);
  }
  std::fflush(file_);
}

void MetricsLogger::on_step_end(TrainingState& state) { flush_new(state); }
void MetricsLogger::on_evaluate(TrainingState& state, const Metrics& metrics) {
  (void)metrics;
  flush_new(state);
}

void MetricsLogger::on_save(TrainingState& state, const CheckpointInfo& checkpoint) {
  flush_new(state);
  nlohmann::json j = {{"event", "save"}, {"step", checkpoint.step}, {"path", checkpoint.path}};
  if (state.best_global_step) j["best_step"] = *state.best_global_step;
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

void MetricsLogger::on_train_end(TrainingState& state) { flush_new(state); }

}  // namespace lorakeep
