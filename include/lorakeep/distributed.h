// lorakeep/distributed.h: several ranks (torchrun's processes) agreeing
// through torch.distributed's c10d store, so that one run directory serves a
// data-parallel job: rank 0 writes, every rank knows the outcome.
//
//   auto coordinator = lorakeep::Coordinator::from_env();  // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   lorakeep::CheckpointManager ckpt(options, coordinator);
//
// A Coordinator is a handle (copies share one state). Its collectives must be
// called by every rank, in the same order, from one thread per rank; each
// waits at most options.timeout for the other ranks and then throws
// Error(kIOError) naming the ranks that did not arrive.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "lorakeep/training_state.h"

namespace lorakeep {

struct CoordinatorOptions {
  // How long a rank waits for the others (and for rank 0's outcome of a save,
  // which includes writing it) before it gives up naming the missing ranks.
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  // lorakeep's keys live under this prefix of the store (a c10d::PrefixStore),
  // apart from the application's and torchrun's own keys.
  std::string prefix = "lorakeep";
  // Where this rank runs, for CheckpointOptions::save_on_each_node: its
  // node (torchrun's GROUP_RANK) and its index among that node's ranks
  // (LOCAL_RANK). Negative: from torchrun's variables in from_env when they
  // are set, else node 0 and the local rank equal to the rank.
  int node_rank = -1;
  int local_rank = -1;
};

class Coordinator {
 public:
  // One process: world size 1, no store; every collective returns at once.
  Coordinator();

  // `rank` of `world_size` processes sharing `store` (the application's own,
  // e.g. the one its process group was made with). Throws
  // Error(kInvalidArgument) for a rank outside [0, world_size) or a null store
  // with world_size > 1.
  Coordinator(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, CoordinatorOptions options = {});

  // From torchrun's environment: RANK, WORLD_SIZE (unset: one process),
  // MASTER_ADDR, MASTER_PORT, and GROUP_RANK and LOCAL_RANK where set. Under torchrun's elastic agent
  // (TORCHELASTIC_USE_AGENT_STORE=True) every rank connects to the agent's
  // store; otherwise rank 0 hosts a c10d::TCPStore on MASTER_PORT and the
  // others connect to it. Throws Error(kInvalidArgument) naming a missing or
  // malformed variable, Error(kIOError) if the store cannot be reached.
  static Coordinator from_env(CoordinatorOptions options = {});

  int rank() const;
  int world_size() const;
  bool is_main() const { return rank() == 0; }
  int node_rank() const;   // options().node_rank, or 0
  int local_rank() const;  // options().local_rank, or rank()
  const CoordinatorOptions& options() const;
  // The store as given or made by from_env (null for one process), e.g. for
  // the application's own c10d::ProcessGroupGloo: one store per job.
  c10::intrusive_ptr<c10d::Store> store() const;

  // Collectives. `what` names the operation in errors ("save of step 40").
  // Every rank's `bytes`, by rank.
  std::vector<std::string> all_gather(const std::string& what, const std::string& bytes);
  // Rank 0's `bytes` (the others' are ignored).
  std::string broadcast(const std::string& what, const std::string& bytes);
  void barrier(const std::string& what);

  // The metrics of every rank reduced to global values: for each key the
  // mean weighted by each rank's `samples` (the evaluation samples behind
  // its values; > 0), NaN if any rank has NaN. Every rank must report the
  // same keys; throws Error(kInvalidArgument) naming the rank and key
  // otherwise. With world size 1, `local` as it is.
  Metrics reduce_metrics(const Metrics& local, std::int64_t samples);

  // Messages outside the collectives, from any thread and in any order, for
  // work off the training thread: `post` sets `key` (each key once), `await`
  // polls for it without holding the store's connection (a blocking wait
  // would hold it, stalling this rank's collectives) and throws as a
  // collective does, naming `from_rank`, after the timeout; `erase` deletes it.
  void post(const std::string& key, const std::string& bytes);
  std::string await(const std::string& key, int from_rank, const std::string& what);
  void erase(const std::string& key);

  // The number of store round trips (set, get, wait, add) this rank made:
  // for the protocol's message count per operation.
  std::int64_t store_operations() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace lorakeep
