// The one writer of a checkpoint directory (checkpoint_reader.h is its one
// reader): the adapter as PEFT writes it, the optimizer's archive, the RNG
// states by rank, trainer_state.json, each file synced and hashed as it is
// written, and lorakeep_manifest.json last, listing them; then the directory
// published in one rename and the committed set rotated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/checkpoint_manager.h"
#include "checkpoint/committed_set.h"
#include "io/atomic_file.h"

namespace lorakeep::detail {

// What a checkpoint holds besides its trainer state: the adapter's tensors
// (views of the live parameters, streamed through host memory as they are
// written, or host copies taken earlier), the optimizer (streamed from the
// live one, or its serialized bytes), the RNG states by rank.
struct CheckpointContents {
  // An adapter of another name than "default", written in "<name>/" as
  // PEFT's save_pretrained and Trainer's checkpoints do.
  struct Named {
    std::string name;
    LoraConfig config;  // the one it was armed or loaded with (armed_config)
    NamedTensors tensors;
  };

  LoraConfig config;           // adapter_config.json's (its target_modules resolved against the model)
  NamedTensors adapter;        // empty: the model has named adapters only (no files in the checkpoint's root)
  std::vector<Named> named;    // in adapter_names order
  std::string active_adapter;  // with named adapters: the one the layers compute
  torch::optim::Optimizer* optimizer = nullptr;
  std::optional<std::string> optimizer_bytes;
  std::vector<NamedTensors> rng;  // empty: not saved

  // From the live objects, nothing copied yet; what the options save; `lora`
  // (the default adapter's; unused when the model carries named adapters
  // only) resolved (resolve_target_modules); every named adapter with its
  // own config. Throws as adapter_tensors (a config that disagrees with the
  // armed layers) and armed_config.
  static CheckpointContents live(torch::nn::Module& module, const LoraConfig& lora, torch::optim::Optimizer* optimizer,
                                 const CheckpointOptions& options, std::vector<NamedTensors> rng);

  // The same contents copied into host memory: what a save off the training
  // thread writes while training changes the live ones. `optimizer_reserve`:
  // the expected size of the optimizer's bytes.
  CheckpointContents snapshot(std::size_t optimizer_reserve) const;

  // Host bytes a snapshot holds.
  std::uint64_t host_bytes() const;
};

// A checkpoint written in full and synced in its temporary directory, not
// yet visible: the first half of a commit, for a commit that other nodes
// must stage too before any publishes it (node_copies.h). Movable; an
// unpublished one is removed when destroyed.
class StagedCheckpoint {
 public:
  // Writes checkpoint-<state.global_step> of `committed`'s run directory,
  // trainer_state.json with state's best fields as they will be once it is
  // in (`state` itself unchanged). Throws as commit_checkpoint.
  StagedCheckpoint(const CommittedSet& committed, const CheckpointOptions& options, const TrainingState& state,
                   const CheckpointContents& contents);

  const CheckpointInfo& info() const { return info_; }

  // Renames it into place (replacing a checkpoint of its step), syncs the
  // run directory and adds it to `committed`. Throws Error(kIOError).
  void publish(CommittedSet& committed);

 private:
  StagedDirectory staged_;
  CheckpointInfo info_;
};

// Writes and commits checkpoint-<state.global_step> into `committed`'s run
// directory, replacing a checkpoint of that step; state's best fields as they
// are once it is in (recorded in trainer_state.json, as Trainer does); then
// rotates. On failure nothing new is visible, earlier checkpoints are intact,
// and `state` and `committed` are unchanged. Throws Error(kIOError) naming
// the path, Error(kInvalidArgument) for what LibTorch refuses to serialize.
CheckpointInfo commit_checkpoint(CommittedSet& committed, const CheckpointOptions& options, TrainingState& state,
                                 const CheckpointContents& contents);

}  // namespace lorakeep::detail
