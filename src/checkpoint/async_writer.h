// CheckpointManager::save_async's writer: one save at a time off the
// training thread. The calling thread takes a host snapshot (and, with
// several ranks, agrees on the save first, as save does); a background thread
// commits it (rank 0) and posts the outcome through the store, or waits for
// rank 0's outcome there and mirrors it (the other ranks); with
// save_on_each_node each node's writer commits its copy and the rounds of
// node_copies.h go through posted keys. Never a collective off the training
// thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/checkpoint_manager.h"
#include "lorakeep/distributed.h"
#include "checkpoint/committed_set.h"
#include "checkpoint/node_copies.h"

namespace lorakeep::detail {

class AsyncWriter {
 public:
  // Borrows all four for its lifetime; `nodes` is set with save_on_each_node
  // (after construction, before the first save).
  AsyncWriter(Coordinator& coordinator, CommittedSet& committed, const CheckpointOptions& options,
              const std::optional<NodeWriters>& nodes);
  // Waits for the save in flight (never abandons it) and logs an error
  // nobody collected.
  ~AsyncWriter();
  AsyncWriter(const AsyncWriter&) = delete;
  AsyncWriter& operator=(const AsyncWriter&) = delete;

  // Starts the save of `state`'s step (after finish(state)); `state` gets the
  // best as it will be once the checkpoint is in. Throws what the snapshot
  // or the agreement throws, `state` unchanged.
  AsyncSave start(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                  torch::optim::Optimizer* optimizer);

  // Waits for the save in flight.
  void wait();
  // Waits, then raises its failure once (`state`'s best first set from what
  // was committed).
  void finish(TrainingState* state = nullptr);

 private:
  Coordinator& coordinator_;
  CommittedSet& committed_;
  const CheckpointOptions& options_;
  const std::optional<NodeWriters>& nodes_;
  std::thread worker_;
  std::exception_ptr error_;           // the worker's failure, for the next call
  std::vector<std::string> posted_;    // this rank's outcome keys, erased after the next gather
  std::size_t optimizer_reserve_ = 0;  // the last snapshot's optimizer bytes
  std::int64_t saves_ = 0;             // start calls, the same count on every rank
};

}  // namespace lorakeep::detail
