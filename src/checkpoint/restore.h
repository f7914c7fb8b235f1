// Reading checkpoints back into a live run: load_best_into (the best
// adapter, falling back to the next best when options say so) and resume
// (the newest checkpoint that passes, in full: adapter, optimizer, RNG,
// progress). Everything is read and checked on every rank before any rank
// changes anything (collective.h); the adapter goes CPU-first through the
// transfer engine.
#pragma once

#include <optional>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/distributed.h"
#include "checkpoint/committed_set.h"

namespace lorakeep::detail {

// CheckpointManager::load_best_into.
TransferReport restore_best(Coordinator& coordinator, const CommittedSet& committed, const CheckpointOptions& options,
                            torch::nn::Module& module);

// CheckpointManager::resume with resume_from_checkpoint "auto": the newest
// checkpoint that passes, older ones tried in turn.
std::optional<CheckpointInfo> restore_latest(Coordinator& coordinator, const CommittedSet& committed,
                                             const CheckpointOptions& options, torch::nn::Module& module,
                                             TrainingState& state, torch::optim::Optimizer* optimizer);

// CheckpointManager::resume with resume_from_checkpoint a path: that
// checkpoint (of this run directory or another), or an Error.
CheckpointInfo restore_checkpoint(Coordinator& coordinator, const CommittedSet& committed, const std::string& path,
                                  const CheckpointOptions& options, torch::nn::Module& module, TrainingState& state,
                                  torch::optim::Optimizer* optimizer);

}  // namespace lorakeep::detail
