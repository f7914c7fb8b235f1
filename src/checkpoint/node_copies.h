// save_on_each_node: a run directory per node (local disks, no shared file
// system), each written by its node's first local rank, the node's writer,
// with the one-writer protocol of checkpoint_writer.h; the other ranks of the
// node read it. A step counts only once every node has committed it: each
// writer stages its copy, publishes only when every writer staged, and
// rotates only when every writer published, so that every node's committed
// set (and with it best, rotation and resume) is the same. Built on
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
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/collective.h"
#include "checkpoint/committed_set.h"

namespace lorakeep::detail {

// Who writes which copy, from every rank's placement.
struct NodeWriters {
  std::vector<int> writers;  // by node: the rank that writes the node's copy
  int mine = 0;              // the writer of this rank's node
  bool writes = false;       // this rank is it
};

// Opens each node's copy: its writer (the rank whose Coordinator::local_rank()
// is 0) runs `open_for_writing` and leaves a shared-check file; every other
// rank of the node must read it (else Error(kInvalidArgument): the node's
// ranks do not share output_dir), no writer may read another node's (else
// Error(kInvalidArgument): the nodes share it, save_on_each_node is for
// directories they do not). The committed steps become those every node's
// copy has; a step some copy lacks (a save killed between two nodes'
// renames) is logged and ignored, left on disk until a save of its step
// replaces it. Every rank raises the same Error.
NodeWriters open_node_copies(Coordinator& coordinator, const std::string& output_dir, CommittedSet& committed,
                             const std::function<void()>& open_for_writing);

// One round of a commit: runs `local` (on a writer; the other ranks take part
// with nothing to do) and returns at least every writer's outcome.
using CommitRound =
    std::function<std::vector<RankOutcome>(const std::string& round, const std::function<std::string()>& local)>;

// The commit of state.global_step once the ranks agreed on it: each writer
// stages its copy (`stage`), then publishes it once every writer staged,
// then rotates once every writer published; the other ranks mirror their
// writer. A failure in any round raises the same Error on every rank, no
// copy of the step left (a published one withdrawn), `state` unchanged.
// Message count: two rounds after the agreement.
CheckpointInfo commit_on_each_node(const NodeWriters& nodes, CommittedSet& committed, const CheckpointOptions& options,
                                   TrainingState& state, const std::function<StagedCheckpoint()>& stage,
                                   const CommitRound& round, int world_size);

// save with save_on_each_node, on every rank: agree_on_save, then
// commit_on_each_node with gathers for rounds. Every node's copy gets every
// rank's RNG state.
CheckpointInfo save_on_each_node(Coordinator& coordinator, const NodeWriters& nodes, CommittedSet& committed,
                                 const CheckpointOptions& options, torch::nn::Module& module, const LoraConfig& lora,
                                 TrainingState& state, torch::optim::Optimizer* optimizer);

}  // namespace lorakeep::detail
