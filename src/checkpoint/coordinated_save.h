// A run directory shared by several ranks (CheckpointManager's collective
// mode): rank 0 opens, writes and commits; every rank checks what it can see,
// agrees on what is saved, and mirrors rank 0's committed set. Built on
// collective.h: every rank learns every outcome.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/distributed.h"
#include "checkpoint/committed_set.h"

namespace lorakeep::detail {

// The file that proves a directory is shared: a writer leaves one with a
// fresh random token in output_dir (returned); a rank that can read that
// token there sees the writer's directory; the writer removes it after.
std::string leave_shared_check(const std::string& output_dir);
bool sees_shared_check(const std::string& output_dir, const std::string& token);
void remove_shared_check(const std::string& output_dir, const std::string& token);

// Rank 0 runs `open_for_writing` (creates, locks and scans the run directory
// into `committed`) and leaves a file with a random token in it; every other
// rank must read that token there (a directory that is not shared, a
// node-local path, fails on every rank with Error(kInvalidArgument)) and
// adopts rank 0's committed steps.
void open_shared(Coordinator& coordinator, const std::string& output_dir, CommittedSet& committed,
                 const std::function<void()>& open_for_writing);

// Every rank's step, adapter digest, evaluation and RNG state, gathered and
// checked alike on every rank: the same step and evaluation (else
// Error(kInvalidArgument)), the same adapter (else Error(kIncompatible)
// naming the ranks). Returns the RNG states by rank (empty unless
// options.save_rng).
std::vector<NamedTensors> agree_on_save(Coordinator& coordinator, const CheckpointOptions& options,
                                        torch::nn::Module& module, const LoraConfig& lora, const TrainingState& state,
                                        const std::string& what);

// The payload of rank 0's successful commit: its committed steps after
// rotation.
std::string committed_steps_message(const CommittedSet& committed);

// Another rank, after rank 0 committed `step`: adds the checkpoint and keeps
// what rank 0 kept (from `payload`, committed_steps_message).
CheckpointInfo mirror_commit(CommittedSet& committed, std::int64_t step, double epoch, const Metrics& metrics,
                             const std::string& payload);

// save on every rank: agree_on_save, rank 0 commits, every rank learns the
// outcome (and mirrors it), or raises rank 0's error; `state` unchanged on
// failure.
CheckpointInfo coordinated_save(Coordinator& coordinator, CommittedSet& committed, const CheckpointOptions& options,
                                torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                                torch::optim::Optimizer* optimizer);

}  // namespace lorakeep::detail
