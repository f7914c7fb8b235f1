// lorakeep/checkpoint_options.h: how a run saves, keeps and reloads
// checkpoints, with Hugging Face TrainingArguments' names where they exist.
// Does not include LibTorch (the YAML loader fills it on its own).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace lorakeep {

enum class SaveStrategy {
  kNo,     // never save
  kSteps,  // every save_steps optimizer steps
  kEpoch,  // at the end of every epoch
  kBest,   // whenever an evaluation sets a new best metric
};

enum class EvalStrategy { kNo, kSteps, kEpoch };

struct CheckpointOptions {
  // behaviour
  std::string output_dir;  // the run directory; checkpoint-<step>/ go here
  SaveStrategy save_strategy = SaveStrategy::kSteps;
  std::int64_t save_steps = 500;  // kSteps: save every this many steps
  EvalStrategy eval_strategy = EvalStrategy::kNo;
  std::int64_t eval_steps = 0;                 // kSteps: 0 means logging_steps, as Trainer
  std::int64_t logging_steps = 500;            // training-loss log entries every this many steps
  int save_total_limit = 0;                    // keep the newest N checkpoints (0: keep all)
  int keep_best = 1;                           // and the best K, whatever their age (at least 1 with a metric)
  std::string metric_for_best_model = "loss";  // "eval_" is prepended unless present, as Trainer does
  std::optional<bool> greater_is_better;       // default: false for names ending in "loss", else true
  bool load_best_model_at_end = false;         // LoadBestAtEnd reloads the best at on_train_end
  bool fallback_to_next_best = false;          // a corrupt best: load the next best instead (logged loudly)
  bool save_optimizer = true;                  // optimizer state in lorakeep_optimizer.pt
  bool save_rng = true;                        // RNG state in lorakeep_rng.safetensors
  bool verify_checksums = true;                // reloads and resume check every byte read against the manifest first
  bool save_async = false;  // CheckpointCallback saves with save_async: training waits only for a host snapshot
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // transfer piece size for reloads
};

// "loss" => "eval_loss"; "eval_accuracy" stays.
std::string metric_key(const CheckpointOptions& options);

// options.greater_is_better, else false for metric names ending in "loss".
bool greater_is_better(const CheckpointOptions& options);

// Checks the options. Throws Error(kInvalidArgument) naming the field.
void validate(const CheckpointOptions& options);

}  // namespace lorakeep
