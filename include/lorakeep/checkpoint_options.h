// lorakeep/checkpoint_options.h: how a CheckpointManager keeps and reloads
// checkpoints, with Hugging Face TrainingArguments' names where they exist.
// When to evaluate and save is the callbacks' business
// (lorakeep/callback_options.h). Does not include LibTorch (the YAML loader
// fills it on its own).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace lorakeep {

struct CheckpointOptions {
  // behaviour
  std::string output_dir;                      // the run directory; checkpoint-<step>/ go here
  int save_total_limit = 0;                    // keep the newest N checkpoints (0: keep all)
  int keep_best = 1;                           // and the best K, whatever their age (at least 1 with a metric)
  std::string metric_for_best_model = "loss";  // "eval_" is prepended unless present, as Trainer does
  std::optional<bool> greater_is_better;       // default: false for names ending in "loss", else true
  bool fallback_to_next_best = false;          // a corrupt best: load the next best instead (logged loudly)
  bool save_optimizer = true;                  // optimizer state in lorakeep_optimizer.pt
  bool save_rng = true;                        // RNG state in lorakeep_rng.safetensors
  bool verify_checksums = true;                // reloads and resume check every byte read against the manifest first
  // Several ranks on nodes that each have their own output_dir (local
  // disks, no shared file system), as Trainer's save_on_each_node: the first
  // local rank of each node (Coordinator::local_rank() 0) writes that node's
  // copy of every checkpoint; a step counts only once every node committed
  // it, and rotation, best and resume agree across nodes. Off: output_dir
  // must be one directory every rank sees (else the manager refuses it).
  bool save_on_each_node = false;
  // What CheckpointManager::resume resumes from, as Trainer's argument:
  // "auto" or "true": the newest complete checkpoint of output_dir (older
  // ones tried when it is damaged), a fresh start when there is none;
  // "none" or "false": none, a fresh start (the checkpoints already in
  // output_dir stay, rotated with the new ones); anything else: the path of
  // a checkpoint directory (of output_dir or another run's), which must load.
  std::string resume_from_checkpoint = "auto";
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // transfer piece size for reloads
};

// "loss" => "eval_loss"; "eval_accuracy" stays.
std::string metric_key(const CheckpointOptions& options);

// options.greater_is_better, else false for metric names ending in "loss".
bool greater_is_better(const CheckpointOptions& options);

// What resume_from_checkpoint asks for.
enum class ResumeFrom { kNewest, kNone, kPath };
ResumeFrom resume_from(const CheckpointOptions& options);

// Checks the options. Throws Error(kInvalidArgument) naming the field.
void validate(const CheckpointOptions& options);

}  // namespace lorakeep
